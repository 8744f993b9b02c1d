package dev.sagalog.examples.shipping;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

/**
 * The example's Avro schemas and Sagalog's wire format: Avro single-object encoding.
 *
 * <p>A record is {@code 0xC3 0x01}, the writer schema's CRC-64-AVRO fingerprint of its Parsing
 * Canonical Form as 8 little-endian bytes, then the Avro binary body. That is exactly what
 * Apache Avro's {@link BinaryMessageEncoder} writes and {@link BinaryMessageDecoder} reads
 * ({@link SchemaNormalization#parsingFingerprint64}), and what Sagalog's Python side writes and
 * reads (stream_processors/avro.py), so the two agree on every byte without sharing code.
 *
 * <p>The schema files are the ones in the repository's schemas/examples/orders folder (and
 * OrderPlaced-v2.avsc beside the pom), put on the classpath under schemas/ by the build.
 */
final class Avro {
  static final Schema ORDER_PLACED = load("OrderPlaced.avsc");
  static final Schema ORDER_PLACED_V2 = load("OrderPlaced-v2.avsc");
  static final Schema CREATE_SHIPPING_LABEL = load("CreateShippingLabel.avsc");
  static final Schema SHIPPING_LABEL_CREATED = load("ShippingLabelCreated.avsc");
  static final Schema SHIPPING_FAILED = load("ShippingFailed.avsc");

  private Avro() {}

  static Schema load(String file) {
    try (InputStream in = Avro.class.getResourceAsStream("/schemas/" + file)) {
      if (in == null) {
        throw new IllegalStateException("schema " + file + " is not on the classpath");
      }
      // A parser per file: OrderPlaced v1 and v2 share a full name, and a parser knows one.
      return new Schema.Parser().parse(in);
    } catch (IOException error) {
      throw new UncheckedIOException(error);
    }
  }

  /** Encodes with the schema's single-object header. Not thread-safe: one per thread. */
  static final class Encoder {
    private final BinaryMessageEncoder<GenericRecord> encoder;

    Encoder(Schema schema) {
      encoder = new BinaryMessageEncoder<>(GenericData.get(), schema);
    }

    byte[] encode(GenericRecord record) {
      ByteArrayOutputStream out = new ByteArrayOutputStream(64);
      try {
        encoder.encode(record, out);
      } catch (IOException error) {
        throw new UncheckedIOException(error);
      }
      return out.toByteArray();
    }
  }

  /**
   * Decodes records written with {@code schema} (its fingerprint); anything else raises
   * {@code MissingSchemaException}, a bad header {@code BadHeaderException}.
   */
  static BinaryMessageDecoder<GenericRecord> decoder(Schema schema) {
    return new BinaryMessageDecoder<>(GenericData.get(), schema);
  }

  /** The fingerprint as Sagalog prints it: the 8 header bytes in hex, little-endian. */
  static String fingerprint(Schema schema) {
    long value = SchemaNormalization.parsingFingerprint64(schema);
    StringBuilder hex = new StringBuilder(16);
    for (int i = 0; i < 8; i++) {
      hex.append(String.format("%02x", (value >>> (8 * i)) & 0xff));
    }
    return hex.toString();
  }

  /** A string field's value as text (Avro hands out {@code Utf8}). */
  static String text(GenericRecord record, String field) {
    Object value = record.get(field);
    return value == null ? null : value.toString();
  }
}

package dev.sagalog.examples.shipping;

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Random;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Places {@code OrderPlaced} events on {@code orders.events}, as an order service in Java would,
 * with failures injected through the orders' data (as examples/order_fulfillment/scenario.py):
 * card {@code tok_declined} makes the payment fail (the saga ends failed), postcode {@code 00000}
 * makes shipping fail (the payment is refunded: compensated); other orders complete.
 *
 * <p>Each order is keyed by its id (UTF-8; the Java client's default partitioner, murmur2, is
 * Sagalog's) and single-object encoded with OrderPlaced v1, or with {@code --v2} with
 * OrderPlaced-v2.avsc (v1 plus an optional {@code channel}): Sagalog reads v2 records once that
 * schema is recorded for the topic ({@code sagas schemas register}). After every order is
 * acknowledged it prints one JSON line per order to stdout: {@code {"order_id": ..., "expected":
 * "completed"|"failed"|"compensated"}}; a summary goes to stderr.
 *
 * <p>Options: --bootstrap (127.0.0.1:9092), --topic (orders.events), --count (100),
 * --payment-failure-rate (0.03), --shipping-failure-rate (0.03), --run-id (random: order ids are
 * order-RUN-0000000...), --seed (random), --v2, --channel (java; v2 only).
 */
public final class OrderProducer {
  static final String DECLINED_CARD = "tok_declined";
  static final String UNSHIPPABLE_POSTCODE = "00000";

  private OrderProducer() {}

  public static void main(String[] argv) throws Exception {
    Args args =
        new Args(
            argv,
            Set.of(
                "bootstrap",
                "topic",
                "count",
                "payment-failure-rate",
                "shipping-failure-rate",
                "run-id",
                "seed",
                "channel"),
            Set.of("v2"));
    String topic = args.get("topic", "orders.events");
    int count = Integer.parseInt(args.get("count", "100"));
    double paymentFailures = Double.parseDouble(args.get("payment-failure-rate", "0.03"));
    double shippingFailures = Double.parseDouble(args.get("shipping-failure-rate", "0.03"));
    String run = args.get("run-id", UUID.randomUUID().toString().substring(0, 8));
    String seed = args.get("seed", null);
    Random random = seed == null ? new Random() : new Random(Long.parseLong(seed));
    boolean v2 = args.flag("v2");
    Schema schema = v2 ? Avro.ORDER_PLACED_V2 : Avro.ORDER_PLACED;
    Avro.Encoder encoder = new Avro.Encoder(schema);

    Properties config = new Properties();
    config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap", "127.0.0.1:9092"));
    config.put(ProducerConfig.CLIENT_ID_CONFIG, "java-order-producer");
    config.put(ProducerConfig.ACKS_CONFIG, "all");
    config.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
    config.put(ProducerConfig.LINGER_MS_CONFIG, 5);
    config.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, 15_000); // a missing topic: fail in 15 s
    config.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
    config.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);

    List<String> lines = new ArrayList<>(count);
    AtomicReference<Exception> failure = new AtomicReference<>();
    try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(config)) {
      for (int number = 0; number < count; number++) {
        double draw = random.nextDouble();
        String card = "tok_visa";
        String postcode = "10115";
        String expected = "completed";
        if (draw < paymentFailures) {
          card = DECLINED_CARD;
          expected = "failed";
        } else if (draw < paymentFailures + shippingFailures) {
          postcode = UNSHIPPABLE_POSTCODE;
          expected = "compensated";
        }
        String orderId = String.format("order-%s-%07d", run, number);
        GenericRecord order = new GenericData.Record(schema);
        order.put("order_id", orderId);
        order.put("customer_id", String.format("customer-%05d", random.nextInt(10_000)));
        order.put("amount_cents", (long) random.nextInt(500, 50_000));
        order.put("card_token", card);
        order.put("postcode", postcode);
        if (v2) {
          order.put("channel", args.get("channel", "java"));
        }
        producer.send(
            new ProducerRecord<>(topic, orderId, encoder.encode(order)),
            (metadata, error) -> {
              if (error != null) {
                failure.compareAndSet(null, error);
              }
            });
        lines.add("{\"order_id\": " + json(orderId) + ", \"expected\": " + json(expected) + "}");
      }
      producer.flush();
    }
    if (failure.get() != null) {
      System.err.println("error: not every order was acknowledged: " + failure.get());
      System.exit(1);
    }
    StringBuilder out = new StringBuilder();
    for (String line : lines) {
      out.append(line).append('\n');
    }
    System.out.print(out);
    System.out.flush();
    System.err.printf(
        "placed %d orders on %s with OrderPlaced %s (fingerprint %s)%n",
        count, topic, v2 ? "v2" : "v1", Avro.fingerprint(schema));
  }

  /** A JSON string (order ids and outcomes are plain text; escape what JSON requires). */
  static String json(String text) {
    StringBuilder quoted = new StringBuilder("\"");
    for (char c : text.toCharArray()) {
      if (c == '"' || c == '\\') {
        quoted.append('\\').append(c);
      } else if (c < 0x20) {
        quoted.append(String.format("\\u%04x", (int) c));
      } else {
        quoted.append(c);
      }
    }
    return quoted.append('"').toString();
  }
}

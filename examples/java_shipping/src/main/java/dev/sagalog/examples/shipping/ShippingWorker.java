package dev.sagalog.examples.shipping;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.avro.AvroRuntimeException;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.CloseOptions;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.AuthorizationException;
import org.apache.kafka.common.errors.InvalidProducerEpochException;
import org.apache.kafka.common.errors.OutOfOrderSequenceException;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.errors.UnsupportedVersionException;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The shipping service of the order-fulfilment example, as a plain Kafka Java client: what
 * {@code sagas worker examples.order_fulfillment.services:shipping} does, without Sagalog.
 *
 * <p>It consumes {@code shipping.commands} in its own consumer group (read_committed) and answers
 * each {@code CreateShippingLabel} with {@code ShippingLabelCreated} (tracking number {@code
 * "trk_" + sha256(idempotency key)[:16 hex]}) or, for postcode 00000, {@code ShippingFailed}
 * ("cannot ship there"), exactly as services.py does. The reply goes to the topic in the
 * command's {@code sagalog.reply_to} header, keyed by its {@code sagalog.instance} header (the
 * Java client's default partitioner is murmur2, as Sagalog's), with the command's {@code
 * sagalog.command_id}. Each polled batch is answered in one Kafka transaction holding the replies
 * and the consumed offsets ({@code sendOffsetsToTransaction} with the consumer's group metadata):
 * a reply exists exactly when its command counts as consumed.
 *
 * <p>Redelivered commands: the label (the side effect) is made once per {@code
 * sagalog.idempotency_key}, the step's key shared by all its attempts. This process remembers
 * the labels it made by key, so a command seen again (an aborted transaction re-read, a redrive,
 * a retry's new attempt) gets the same label and the same reply again, with the new command's
 * id; Sagalog ignores a second reply to an attempt already answered. The tracking number is
 * derived from the key, so even another process (or this one after a restart) answers a
 * redelivered command with the same reply. Unlike Sagalog's Python worker it keeps no {@code
 * <group>.handled} topic.
 *
 * <p>Refused, with a log line and no reply: a reply address that is not a saga's inbox (a name
 * ending in {@code .inbox}), a command without Sagalog's headers, one it cannot decode.
 *
 * <p>Options: --bootstrap (127.0.0.1:9092), --group (java.worker.shipping), --topic
 * (shipping.commands), --offset-reset (earliest: where a new group starts), --transactional-id
 * (the group plus a random id).
 */
public final class ShippingWorker {
  static final String COMMAND_ID = "sagalog.command_id";
  static final String IDEMPOTENCY_KEY = "sagalog.idempotency_key";
  static final String REPLY_TO = "sagalog.reply_to";
  static final String INSTANCE = "sagalog.instance";
  static final String UNSHIPPABLE_POSTCODE = "00000";
  /** Labels remembered by idempotency key; the oldest are forgotten beyond this many. */
  static final int REMEMBERED_LABELS = 200_000;

  /** The outcome of making a label for one step: shipped with a tracking number, or not. */
  record Label(String orderId, String trackingNumber, String failure) {}

  private final String topic;
  private final KafkaConsumer<byte[], byte[]> consumer;
  private final KafkaProducer<byte[], byte[]> producer;
  private final String offsetReset;
  private final AtomicBoolean running = new AtomicBoolean(true);
  private final BinaryMessageDecoder<GenericRecord> commands =
      Avro.decoder(Avro.CREATE_SHIPPING_LABEL);
  private final Avro.Encoder created = new Avro.Encoder(Avro.SHIPPING_LABEL_CREATED);
  private final Avro.Encoder failed = new Avro.Encoder(Avro.SHIPPING_FAILED);
  private final Set<String> replyTopics = new HashSet<>();
  private final Map<String, Label> labels =
      new LinkedHashMap<>(1024, 0.75f, true) {
        @Override
        protected boolean removeEldestEntry(Map.Entry<String, Label> eldest) {
          return size() > REMEMBERED_LABELS;
        }
      };
  private long handled;
  private long made;
  private long refused;

  ShippingWorker(String bootstrap, String group, String topic, String offsetReset, String txId) {
    this.topic = topic;
    this.offsetReset = offsetReset;
    Properties consumerConfig = new Properties();
    consumerConfig.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    consumerConfig.put(ConsumerConfig.GROUP_ID_CONFIG, group);
    consumerConfig.put(ConsumerConfig.CLIENT_ID_CONFIG, "java-shipping-worker");
    consumerConfig.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    consumerConfig.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
    consumerConfig.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, offsetReset);
    consumerConfig.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, 500);
    consumerConfig.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    consumerConfig.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    consumer = new KafkaConsumer<>(consumerConfig);
    Properties producerConfig = new Properties();
    producerConfig.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    producerConfig.put(ProducerConfig.CLIENT_ID_CONFIG, "java-shipping-worker");
    producerConfig.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txId);
    producerConfig.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
    producerConfig.put(ProducerConfig.ACKS_CONFIG, "all");
    // A reply topic that does not exist must not hold the loop for a minute.
    producerConfig.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, 15_000);
    // No partitioner setting: with a key, the Java client's is murmur2 (positive hash modulo
    // the partition count), which is librdkafka's murmur2_random that Sagalog configures.
    producerConfig.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
    producerConfig.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
    producer = new KafkaProducer<>(producerConfig);
  }

  public static void main(String[] argv) {
    Args args =
        new Args(
            argv,
            Set.of("bootstrap", "group", "topic", "offset-reset", "transactional-id"),
            Set.of());
    String group = args.get("group", "java.worker.shipping");
    ShippingWorker worker =
        new ShippingWorker(
            args.get("bootstrap", "127.0.0.1:9092"),
            group,
            args.get("topic", "shipping.commands"),
            args.get("offset-reset", "earliest"),
            args.get("transactional-id", group + "-" + UUID.randomUUID()));
    Thread serving = Thread.currentThread();
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  worker.running.set(false);
                  worker.consumer.wakeup();
                  try {
                    serving.join(20_000);
                  } catch (InterruptedException ignored) {
                    Thread.currentThread().interrupt();
                  }
                }));
    worker.serve();
  }

  void serve() {
    producer.initTransactions();
    consumer.subscribe(List.of(topic), new Rebalance());
    log("serving " + topic + " as group " + consumer.groupMetadata().groupId());
    long lastReport = System.nanoTime();
    long reported = 0;
    try {
      while (running.get()) {
        ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(100));
        if (!records.isEmpty()) {
          answer(records);
        }
        if (handled != reported && System.nanoTime() - lastReport > 5_000_000_000L) {
          report();
          reported = handled;
          lastReport = System.nanoTime();
        }
      }
    } catch (WakeupException stopping) {
      // the shutdown hook: nothing is open between batches
    } finally {
      report();
      producer.close(Duration.ofSeconds(10));
      consumer.close(CloseOptions.timeout(Duration.ofSeconds(10)));
      log("stopped");
    }
  }

  /** One batch, one transaction: its replies and its offsets, or neither. */
  private void answer(ConsumerRecords<byte[], byte[]> records) {
    producer.beginTransaction();
    try {
      Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
      for (ConsumerRecord<byte[], byte[]> record : records) {
        ProducerRecord<byte[], byte[]> reply = reply(record);
        if (reply != null) {
          producer.send(reply);
        }
        // The next offset to read: last handled + 1.
        offsets.put(
            new TopicPartition(record.topic(), record.partition()),
            new OffsetAndMetadata(record.offset() + 1));
      }
      producer.sendOffsetsToTransaction(offsets, consumer.groupMetadata());
      producer.commitTransaction();
      handled += records.count();
    } catch (ProducerFencedException
        | InvalidProducerEpochException
        | OutOfOrderSequenceException
        | AuthorizationException
        | UnsupportedVersionException fatal) {
      // Another process took over (or the producer cannot go on): stop; a restart recovers.
      log("fatal: " + fatal);
      throw fatal;
    } catch (KafkaException error) {
      log("aborting a batch of " + records.count() + " commands: " + error);
      producer.abortTransaction();
      rewind();
    }
  }

  /** After an abort: read again from the committed offsets (the batch's replies are gone). */
  private void rewind() {
    Set<TopicPartition> assigned = consumer.assignment();
    Map<TopicPartition, OffsetAndMetadata> committed = consumer.committed(assigned);
    for (TopicPartition partition : assigned) {
      OffsetAndMetadata offset = committed.get(partition);
      if (offset != null) {
        consumer.seek(partition, offset);
      } else if (offsetReset.equals("latest")) {
        consumer.seekToEnd(List.of(partition));
      } else {
        consumer.seekToBeginning(List.of(partition));
      }
    }
  }

  /** The reply to a command record, or null (refused, with a log line). */
  private ProducerRecord<byte[], byte[]> reply(ConsumerRecord<byte[], byte[]> record) {
    String where = record.topic() + "[" + record.partition() + "]@" + record.offset();
    String commandId = header(record, COMMAND_ID);
    String replyTo = header(record, REPLY_TO);
    String instance = header(record, INSTANCE);
    if (commandId == null || replyTo == null || instance == null) {
      return refuse(where, "no sagalog.command_id, sagalog.reply_to or sagalog.instance header");
    }
    if (!replyTo.endsWith(".inbox")) {
      return refuse(where, "reply address " + replyTo + " is not a saga's inbox (*.inbox)");
    }
    if (!deliverable(replyTo)) {
      return refuse(where, "reply topic " + replyTo + " does not exist");
    }
    if (record.value() == null) {
      return refuse(where, "no value");
    }
    GenericRecord command;
    try {
      command = commands.decode(record.value());
    } catch (java.io.IOException | AvroRuntimeException error) {
      return refuse(where, "not a CreateShippingLabel this worker can read: " + error);
    }
    // The step's key, the same for all its attempts; commands from before the header existed
    // carry it in their id: <saga>/<instance>/<step>/<attempt>.
    String key = header(record, IDEMPOTENCY_KEY);
    if (key == null) {
      key = commandId.substring(0, Math.max(0, commandId.lastIndexOf('/')));
    }
    Label label = label(key, Avro.text(command, "order_id"), Avro.text(command, "postcode"));
    GenericRecord body;
    byte[] value;
    if (label.failure() == null) {
      body = new GenericData.Record(Avro.SHIPPING_LABEL_CREATED);
      body.put("order_id", label.orderId());
      body.put("tracking_number", label.trackingNumber());
      value = created.encode(body);
    } else {
      body = new GenericData.Record(Avro.SHIPPING_FAILED);
      body.put("order_id", label.orderId());
      body.put("reason", label.failure());
      value = failed.encode(body);
    }
    RecordHeaders headers = new RecordHeaders();
    headers.add(COMMAND_ID, commandId.getBytes(StandardCharsets.UTF_8));
    return new ProducerRecord<>(
        replyTo, null, instance.getBytes(StandardCharsets.UTF_8), value, headers);
  }

  /** The side effect, once per idempotency key: a redelivered command gets the same label. */
  private Label label(String key, String orderId, String postcode) {
    Label known = labels.get(key);
    if (known != null) {
      return known;
    }
    made++;
    Label label =
        UNSHIPPABLE_POSTCODE.equals(postcode)
            ? new Label(orderId, null, "cannot ship there")
            : new Label(orderId, reference("trk", key), null);
    labels.put(key, label);
    return label;
  }

  /** A stable reference derived from the step's key, as services.py's _reference. */
  static String reference(String prefix, String key) {
    try {
      byte[] digest =
          MessageDigest.getInstance("SHA-256").digest(key.getBytes(StandardCharsets.UTF_8));
      StringBuilder hex = new StringBuilder(prefix).append('_');
      for (int i = 0; i < 8; i++) { // 8 bytes = the first 16 hex digits
        hex.append(String.format("%02x", digest[i]));
      }
      return hex.toString();
    } catch (NoSuchAlgorithmException impossible) {
      throw new IllegalStateException(impossible);
    }
  }

  private boolean deliverable(String replyTo) {
    if (replyTopics.contains(replyTo)) {
      return true;
    }
    try {
      if (!producer.partitionsFor(replyTo).isEmpty()) {
        replyTopics.add(replyTo);
        return true;
      }
    } catch (KafkaException error) {
      log("reply topic " + replyTo + ": " + error);
    }
    return false;
  }

  private ProducerRecord<byte[], byte[]> refuse(String where, String why) {
    refused++;
    log("skipping command " + where + ": " + why);
    return null;
  }

  private static String header(ConsumerRecord<byte[], byte[]> record, String name) {
    Header last = record.headers().lastHeader(name);
    return last == null || last.value() == null
        ? null
        : new String(last.value(), StandardCharsets.UTF_8);
  }

  private void report() {
    log(
        "handled "
            + handled
            + " commands: "
            + made
            + " labels made, "
            + refused
            + " refused, "
            + labels.size()
            + " remembered");
  }

  static void log(String line) {
    System.out.println("java-shipping: " + line);
    System.out.flush();
  }

  /** Logs assignments once their positions are known, so a reader knows it is serving them. */
  private final class Rebalance implements ConsumerRebalanceListener {
    @Override
    public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
      StringBuilder positions = new StringBuilder();
      for (TopicPartition partition : partitions) {
        positions
            .append(positions.length() == 0 ? "" : ", ")
            .append(partition.partition())
            .append('@')
            .append(consumer.position(partition));
      }
      log("assigned " + topic + " partitions [" + positions + "]");
    }

    @Override
    public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
      // Each batch commits before the next poll: nothing is pending for these partitions.
      if (!partitions.isEmpty()) {
        log("revoked " + partitions.size() + " partitions of " + topic);
      }
    }
  }
}

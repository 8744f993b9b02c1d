package dev.sagalog.examples.shipping;

import java.util.Arrays;

/**
 * {@code java -jar java-shipping.jar worker [options]} or {@code ... produce [options]}.
 *
 * <p>See ShippingWorker and OrderProducer for their options, and the README beside the pom.
 */
public final class Main {
  private Main() {}

  public static void main(String[] args) throws Exception {
    // The Kafka clients log a lot at INFO (every configuration); keep warnings and errors.
    System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
    String[] rest = Arrays.copyOfRange(args, Math.min(1, args.length), args.length);
    String command = args.length == 0 ? "" : args[0];
    try {
      switch (command) {
        case "worker" -> ShippingWorker.main(rest);
        case "produce" -> OrderProducer.main(rest);
        default -> {
          System.err.println("usage: java -jar java-shipping.jar worker|produce [--option value ...]");
          System.exit(2);
        }
      }
    } catch (IllegalArgumentException error) {
      System.err.println("error: " + error.getMessage());
      System.exit(2);
    }
  }
}

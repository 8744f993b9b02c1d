package dev.sagalog.examples.shipping;

import java.util.HashMap;
import java.util.Map;
import java.util.Set;

/** {@code --name value} and {@code --flag} options, checked against the names a command knows. */
final class Args {
  private final Map<String, String> values = new HashMap<>();

  Args(String[] args, Set<String> options, Set<String> flags) {
    for (int i = 0; i < args.length; i++) {
      String name = args[i].startsWith("--") ? args[i].substring(2) : null;
      if (name != null && flags.contains(name)) {
        values.put(name, "true");
      } else if (name != null && options.contains(name) && i + 1 < args.length) {
        values.put(name, args[++i]);
      } else {
        throw new IllegalArgumentException(
            "unknown or incomplete argument " + args[i] + "; options: " + options + " " + flags);
      }
    }
  }

  String get(String name, String otherwise) {
    return values.getOrDefault(name, otherwise);
  }

  boolean flag(String name) {
    return values.containsKey(name);
  }
}

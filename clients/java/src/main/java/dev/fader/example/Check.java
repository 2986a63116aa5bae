package dev.fader.example;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.google.common.collect.ImmutableList;
import com.google.common.collect.ImmutableMap;
import dev.openfeature.contrib.providers.flagd.Config;
import dev.openfeature.contrib.providers.flagd.FlagdOptions;
import dev.openfeature.contrib.providers.flagd.FlagdProvider;
import dev.openfeature.contrib.providers.ofrep.OfrepProvider;
import dev.openfeature.contrib.providers.ofrep.OfrepProviderOptions;
import dev.openfeature.sdk.Client;
import dev.openfeature.sdk.EvaluationContext;
import dev.openfeature.sdk.FeatureProvider;
import dev.openfeature.sdk.FlagEvaluationDetails;
import dev.openfeature.sdk.ImmutableContext;
import dev.openfeature.sdk.ImmutableStructure;
import dev.openfeature.sdk.OpenFeatureAPI;
import dev.openfeature.sdk.ProviderEvent;
import dev.openfeature.sdk.Structure;
import dev.openfeature.sdk.Value;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;

/**
 * Reads Fader flags from Java through the OpenFeature SDK and the stock flagd and OFREP
 * providers, with no Fader SDK, and checks every answer it is given.
 *
 * <pre>
 *   java ... dev.fader.example.Check rpc         remote evaluation: FLAGD_HOST / FLAGD_PORT
 *                                                (Fader's --grpc-listen, default localhost:8013)
 *                                                or FLAGD_SOCKET_PATH (Fader's --uds)
 *   java ... dev.fader.example.Check in-process  local evaluation of the flags Fader syncs:
 *                                                FLAGD_HOST / FLAGD_PORT (--sync-listen, 8015)
 *   java ... dev.fader.example.Check ofrep       remote evaluation over HTTP: OFREP_ENDPOINT
 *                                                (Fader's --ofrep-listen, default
 *                                                http://localhost:8016), OFREP_BEARER_TOKEN if
 *                                                Fader has --ofrep-token-file
 * </pre>
 *
 * <p>rpc and in-process run from the `mvn package` build, ofrep from `mvn -P ofrep package`:
 * the two providers need different SDK versions (pom.xml).
 *
 * <p>Input on stdin, one JSON object a line (the protocol of clients/node/check.mjs): a check
 * {"type", "flag", "default", "context", "expect": {"value", "variant", "reason", "errorCode"}}
 * or {"wait": "change"}. Each check prints "ok" or "FAIL"; the last line is "all N answers
 * right", or "M of N answers wrong" and the exit status is 1.
 */
public final class Check {
  private static final ObjectMapper JSON = new ObjectMapper();

  private Check() {}

  private static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }

  private static FeatureProvider provider(String mode) {
    return mode.equals("ofrep") ? ofrep() : flagd(mode);
  }

  private static OfrepProvider ofrep() {
    OfrepProviderOptions.Builder options =
        OfrepProviderOptions.builder().baseUrl(env("OFREP_ENDPOINT", "http://localhost:8016"));
    String token = System.getenv("OFREP_BEARER_TOKEN");
    if (token != null && !token.isEmpty()) {
      options.headers(ImmutableMap.of("Authorization", ImmutableList.of("Bearer " + token)));
    }
    return OfrepProvider.constructProvider(options.build());
  }

  private static FlagdProvider flagd(String mode) {
    FlagdOptions.FlagdOptionsBuilder options = FlagdOptions.builder().deadline(5000);
    if (mode.equals("in-process")) {
      options.resolverType(Config.Resolver.IN_PROCESS);
    } else if (mode.equals("rpc")) {
      options.resolverType(Config.Resolver.RPC);
    } else {
      throw new IllegalArgumentException("unknown mode " + mode + ": rpc, in-process or ofrep");
    }
    String socket = System.getenv("FLAGD_SOCKET_PATH");
    if (socket != null && !socket.isEmpty()) {
      options.socketPath(socket);
    } else {
      String port = env("FLAGD_PORT", mode.equals("in-process") ? "8015" : "8013");
      options.host(env("FLAGD_HOST", "localhost")).port(Integer.parseInt(port));
    }
    return new FlagdProvider(options.build());
  }

  /** A JSON value as an OpenFeature Value. */
  private static Value value(JsonNode node) {
    if (node == null || node.isNull()) {
      return new Value();
    }
    if (node.isBoolean()) {
      return new Value(node.booleanValue());
    }
    if (node.isIntegralNumber()) {
      return new Value(node.intValue());
    }
    if (node.isNumber()) {
      return new Value(node.doubleValue());
    }
    if (node.isTextual()) {
      return new Value(node.textValue());
    }
    if (node.isArray()) {
      List<Value> items = new ArrayList<>();
      node.forEach(item -> items.add(value(item)));
      return new Value(items);
    }
    Map<String, Value> fields = new HashMap<>();
    node.fields().forEachRemaining(field -> fields.put(field.getKey(), value(field.getValue())));
    return new Value(new ImmutableStructure(fields));
  }

  /** An OpenFeature Value as a JSON tree (numbers as the JSON check has them). */
  private static JsonNode json(Object object) {
    if (object instanceof Value value) {
      return json(value.asObject());
    }
    if (object instanceof Structure structure) {
      ObjectNode node = JSON.createObjectNode();
      structure.asMap().forEach((key, item) -> node.set(key, json(item)));
      return node;
    }
    if (object instanceof List<?> list) {
      var node = JSON.createArrayNode();
      list.forEach(item -> node.add(json(item)));
      return node;
    }
    return JSON.valueToTree(object);
  }

  private static EvaluationContext context(JsonNode node) {
    String key = null;
    Map<String, Value> attributes = new HashMap<>();
    if (node != null) {
      Iterator<Map.Entry<String, JsonNode>> fields = node.fields();
      while (fields.hasNext()) {
        Map.Entry<String, JsonNode> field = fields.next();
        if (field.getKey().equals("targetingKey")) {
          key = field.getValue().asText();
        } else {
          attributes.put(field.getKey(), value(field.getValue()));
        }
      }
    }
    return new ImmutableContext(key, attributes);
  }

  private static ObjectNode answer(Client client, JsonNode check) {
    String flag = check.get("flag").asText();
    JsonNode fallback = check.get("default");
    EvaluationContext ctx = context(check.get("context"));
    FlagEvaluationDetails<?> details;
    switch (check.get("type").asText()) {
      case "boolean" -> details = client.getBooleanDetails(flag, fallback.asBoolean(), ctx);
      case "string" -> details = client.getStringDetails(flag, fallback.asText(), ctx);
      case "integer" -> details = client.getIntegerDetails(flag, fallback.asInt(), ctx);
      case "float" -> details = client.getDoubleDetails(flag, fallback.asDouble(), ctx);
      default -> details = client.getObjectDetails(flag, value(fallback), ctx);
    }
    ObjectNode out = JSON.createObjectNode();
    out.set("value", json(details.getValue()));
    out.put("variant", details.getVariant());
    out.put("reason", details.getReason());
    out.put("errorCode", details.getErrorCode() == null ? null : details.getErrorCode().name());
    return out;
  }

  /** Equal as JSON, numbers by value (1 and 1.0 are the same answer). */
  private static boolean same(JsonNode actual, JsonNode expected) {
    if (expected == null || expected.isNull()) {
      return actual == null || actual.isNull();
    }
    if (actual == null) {
      return false;
    }
    if (expected.isNumber() && actual.isNumber()) {
      return expected.doubleValue() == actual.doubleValue();
    }
    if (expected.isObject() && actual.isObject()) {
      if (expected.size() != actual.size()) {
        return false;
      }
      Iterator<String> names = expected.fieldNames();
      while (names.hasNext()) {
        String name = names.next();
        if (!same(actual.get(name), expected.get(name))) {
          return false;
        }
      }
      return true;
    }
    return expected.equals(actual);
  }

  public static void main(String[] args) throws Exception {
    String mode = args.length > 0 ? args[0] : "rpc";
    OpenFeatureAPI api = OpenFeatureAPI.getInstance();
    api.setProviderAndWait(provider(mode));
    Semaphore changes = new Semaphore(0);
    // registered once ready: the initial sync is not a change the caller waits for
    api.on(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, details -> changes.release());
    Client client = api.getClient();

    int checks = 0;
    int failures = 0;
    BufferedReader input =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    for (String line = input.readLine(); line != null; line = input.readLine()) {
      if (line.isBlank()) {
        continue;
      }
      JsonNode check = JSON.readTree(line);
      if (check.has("wait")) {
        changes.drainPermits();
        System.out.println("waiting for a change");
        if (changes.tryAcquire(60, TimeUnit.SECONDS)) {
          System.out.println("changed");
        } else {
          System.out.println("FAIL no change in 60 s");
          failures++;
        }
        continue;
      }
      checks++;
      ObjectNode got = answer(client, check);
      ObjectNode shown = JSON.createObjectNode();
      boolean ok = true;
      Iterator<Map.Entry<String, JsonNode>> expected = check.get("expect").fields();
      while (expected.hasNext()) {
        Map.Entry<String, JsonNode> field = expected.next();
        shown.set(field.getKey(), got.get(field.getKey()));
        ok &= same(got.get(field.getKey()), field.getValue());
      }
      String what = mode + " " + check.get("type").asText() + " " + check.get("flag").asText();
      if (ok) {
        System.out.println("ok   " + what + " " + shown);
      } else {
        failures++;
        System.out.println("FAIL " + what + " " + shown);
        System.out.println("     expected " + check.get("expect"));
      }
    }
    api.shutdown();
    if (failures > 0) {
      System.out.println(failures + " of " + checks + " answers wrong");
      System.exit(1);
    }
    System.out.println("all " + checks + " answers right");
    System.exit(0);
  }
}

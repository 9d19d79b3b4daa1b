use super::*;
use crate::dapr::ComponentType;

const REDIS: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.redis
  version: v1
  metadata:
  - name: redisHost
    value: localhost:6379
  - name: redisDB
    value: 0
";

#[test]
fn component_loads_with_metadata_values_as_text() {
    let snapshot = load_str("redis.yaml", REDIS).unwrap();
    let component = &snapshot.components["statestore"];
    assert_eq!(component.spec.component_type, ComponentType::StateRedis);
    assert_eq!(
        component.metadata_value("redisHost"),
        Some("localhost:6379")
    );
    assert_eq!(component.metadata_value("redisDB"), Some("0"));
}

#[test]
fn unknown_component_type_names_file_line_field_and_the_supported_types() {
    let text = REDIS.replace("state.redis", "state.cassandra");
    let err = load_str("components/redis.yaml", &text).unwrap_err();
    assert_eq!(err.file, PathBuf::from("components/redis.yaml"));
    assert_eq!(err.line, Some(6), "{err}");
    assert!(
        err.message
            .starts_with("spec.type: unknown component type \"state.cassandra\""),
        "{err}"
    );
    assert!(
        err.message
            .contains("state.in-memory, state.redis, state.postgresql"),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("components/redis.yaml:6:"),
        "{err}"
    );
}

#[test]
fn malformed_component_names_the_field_and_what_was_expected() {
    // `metadata` must be a list of {name, value}; here it is a mapping.
    let text = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.redis
  metadata:
    redisHost: localhost:6379
";
    let err = load_str("bad.yaml", text).unwrap_err();
    assert_eq!(err.line, Some(8), "{err}");
    assert!(
        err.message
            .starts_with("spec.metadata: invalid type: map, expected a sequence"),
        "{err}"
    );
}

#[test]
fn missing_spec_type_is_reported_with_the_field_name() {
    let text = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: s\nspec:\n  version: v1\n";
    let err = load_str("s.yaml", text).unwrap_err();
    assert!(err.message.contains("missing field `type`"), "{err}");
    assert!(err.message.starts_with("spec"), "{err}");
    assert!(err.line.is_some(), "{err}");
}

#[test]
fn unknown_kind_lists_the_known_kinds() {
    let err = load_str(
        "x.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: x}\n",
    )
    .unwrap_err();
    assert_eq!(err.line, Some(2));
    assert!(
        err.message.contains("unknown kind \"HTTPEndpoint\""),
        "{err}"
    );
    assert!(
        err.message
            .contains("Component, Resiliency, Subscription, Configuration, Cluster, Route"),
        "{err}"
    );
}

#[test]
fn broken_yaml_syntax_points_at_the_line() {
    let err = load_str(
        "broken.yaml",
        "kind: Component\nmetadata:\n  name: [unclosed\n",
    )
    .unwrap_err();
    assert!(err.line.is_some(), "{err}");
}

#[test]
fn several_documents_in_one_file_and_the_second_ones_errors_carry_its_line() {
    let text = format!("{REDIS}---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: two\nspec:\n  type: nope\n");
    let err = load_str("multi.yaml", &text).unwrap_err();
    assert_eq!(err.line, Some(19), "{err}");
    let ok = format!("{REDIS}---\n{}", REDIS.replace("statestore", "second"));
    assert_eq!(load_str("multi.yaml", &ok).unwrap().components.len(), 2);
}

#[test]
fn duplicate_component_names_are_refused_naming_the_first() {
    let text = format!("{REDIS}---\n{REDIS}");
    let err = load_str("dup.yaml", &text).unwrap_err();
    assert!(
        err.message
            .contains("Component \"statestore\" is defined twice; first at dup.yaml:1"),
        "{err}"
    );
}

#[test]
fn v1alpha1_subscription_route_becomes_the_default_route() {
    let text = "\
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata:
  name: orders
spec:
  pubsubname: pubsub
  topic: orders
  route: /orders
scopes: [a]
";
    let snapshot = load_str("sub.yaml", text).unwrap();
    let sub = &snapshot.subscriptions[0];
    assert_eq!(sub.spec.routes.default.as_deref(), Some("/orders"));
    assert_eq!(sub.scopes, vec!["a".to_string()]);
}

#[test]
fn v2alpha1_subscription_with_rules_and_dead_letter() {
    let text = "\
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: orders
spec:
  pubsubname: pubsub
  topic: orders
  routes:
    rules:
    - match: event.type == \"big\"
      path: /big
    default: /orders
  deadLetterTopic: poison
";
    let snapshot = load_str("sub.yaml", text).unwrap();
    let spec = &snapshot.subscriptions[0].spec;
    assert_eq!(spec.routes.rules[0].match_expr, "event.type == \"big\"");
    assert_eq!(spec.dead_letter_topic.as_deref(), Some("poison"));
}

#[test]
fn an_invalid_cel_rule_names_file_line_and_field() {
    let text = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: other
spec:
  type: pubsub.in-memory
  version: v1
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: orders
spec:
  pubsubname: pubsub
  topic: orders
  routes:
    rules:
    - match: event.type == \"big\"
      path: /big
    - match: event.type ==
      path: /broken
    default: /orders
";
    let err = load_str("subs/orders.yaml", text).unwrap_err();
    assert_eq!(err.file, PathBuf::from("subs/orders.yaml"));
    assert_eq!(err.line, Some(20), "{err}");
    assert!(
        err.message.starts_with(
            "subscription \"orders\": spec.routes.rules[1].match: invalid CEL expression \"event.type ==\""
        ),
        "{err}"
    );
}

#[test]
fn a_component_target_naming_an_unknown_policy_is_refused() {
    let text = "\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: res
spec:
  policies:
    retries:
      fast:
        policy: constant
        duration: 10ms
        maxRetries: 3
  targets:
    components:
      pubsub:
        inbound:
          retry: slow
";
    let err = load_str("res.yaml", text).unwrap_err();
    assert_eq!(
        err.message,
        "resiliency \"res\": targets.components.pubsub.inbound.retry: unknown policy \"slow\""
    );
}

#[test]
fn resiliency_policies_and_targets_load_with_durations() {
    let text = "\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: myresiliency
spec:
  policies:
    timeouts:
      general: 5s
    retries:
      retryForever:
        policy: exponential
        maxInterval: 15s
        maxRetries: -1
    circuitBreakers:
      simpleCB:
        maxRequests: 1
        timeout: 30s
        trip: consecutiveFailures >= 5
  targets:
    apps:
      b:
        timeout: general
        retry: retryForever
        circuitBreaker: simpleCB
";
    let snapshot = load_str("res.yaml", text).unwrap();
    let res = &snapshot.policies.resiliency["myresiliency"];
    assert_eq!(
        res.spec.policies.timeouts["general"].0,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(
        res.spec.policies.retries["retryForever"].max_interval,
        Some(std::time::Duration::from_secs(15))
    );
    let bad = text.replace("retry: retryForever", "retry: nope");
    let err = load_str("res.yaml", &bad).unwrap_err();
    assert!(
        err.message
            .contains("targets.apps.b.retry: unknown policy \"nope\""),
        "{err}"
    );
}

#[test]
fn bad_duration_says_what_a_duration_looks_like() {
    let text = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    timeouts:\n      general: soon\n";
    let err = load_str("r.yaml", text).unwrap_err();
    assert_eq!(err.line, Some(8), "{err}");
    assert!(
        err.message.contains("spec.policies.timeouts.general"),
        "{err}"
    );
    assert!(err.message.contains("like 500ms, 5s or 1m30s"), "{err}");
}

const MESH: &str = "\
apiVersion: outrigger.dev/v1alpha1
kind: Cluster
metadata:
  name: orders-v1
spec:
  endpoints:
  - address: 127.0.0.1:15010
  - address: 127.0.0.1:15011
    weight: 2
---
apiVersion: outrigger.dev/v1alpha1
kind: Route
metadata:
  name: orders
spec:
  app: orders
  backends:
  - cluster: orders-v1
";

#[test]
fn mesh_cluster_and_route_load_into_the_snapshot() {
    let snapshot = load_str("mesh.yaml", MESH).unwrap();
    let cluster = &snapshot.clusters["orders-v1"];
    assert_eq!(cluster.endpoints.len(), 2);
    assert_eq!(cluster.endpoints[1].weight, 2);
    assert_eq!(
        snapshot.routes["orders"].rules[0].backends[0].cluster,
        "orders-v1"
    );
}

#[test]
fn route_to_unknown_cluster_names_the_route_field_and_cluster() {
    let text = MESH.replace("- cluster: orders-v1", "- cluster: orders-v9");
    let err = load_str("mesh.yaml", &text).unwrap_err();
    assert_eq!(err.line, Some(11), "{err}");
    assert_eq!(
        err.message,
        "route \"orders\": rules[0].backends[0].cluster: unknown cluster \"orders-v9\""
    );
}

#[test]
fn mesh_resources_refuse_unknown_fields_and_bad_addresses() {
    let typo = MESH.replace("  endpoints:", "  endpoint:");
    let err = load_str("mesh.yaml", &typo).unwrap_err();
    assert!(err.message.contains("unknown field `endpoint`"), "{err}");
    let bad = MESH.replace("127.0.0.1:15010", "127.0.0.1");
    let err = load_str("mesh.yaml", &bad).unwrap_err();
    assert_eq!(err.line, Some(7), "{err}");
    assert!(err.message.contains("expected host:port"), "{err}");
}

#[test]
fn load_dir_reads_yaml_files_in_name_order_and_names_the_failing_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), REDIS).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
    let snapshot = load_dir(dir.path()).unwrap();
    assert!(snapshot.components.contains_key("statestore"));
    std::fs::write(
        dir.path().join("b.yml"),
        REDIS.replace("state.redis", "state.bogus"),
    )
    .unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert_eq!(err.file, dir.path().join("b.yml"));
    assert_eq!(err.line, Some(6));
}

#[test]
fn snapshot_round_trips_through_json() {
    let snapshot = load_str("mesh.yaml", &format!("{MESH}---\n{REDIS}")).unwrap();
    let json = serde_json::to_string(&snapshot).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snapshot);
}

#[test]
fn version_changes_when_content_changes() {
    let a = load_str("x.yaml", REDIS).unwrap();
    let b = load_str("x.yaml", &REDIS.replace("localhost", "redis")).unwrap();
    assert_ne!(a.version, b.version);
    assert_eq!(a.version, load_str("x.yaml", REDIS).unwrap().version);
}

const RULES: &str = "\
apiVersion: outrigger.dev/v1alpha1
kind: Cluster
metadata: {name: b-v1}
spec: {endpoints: [{address: 127.0.0.1:15010}]}
---
apiVersion: outrigger.dev/v1alpha1
kind: Cluster
metadata: {name: b-v2}
spec: {endpoints: [{address: 127.0.0.1:15011}]}
---
apiVersion: outrigger.dev/v1alpha1
kind: Route
metadata:
  name: b
spec:
  app: b
  rules:
  - match:
      pathPrefix: /v2/
      method: POST
      headers:
      - name: x-canary
        regex: \"true|yes\"
    backends:
    - cluster: b-v2
    timeout: 2s
    requestHeaders:
      add: {x-route: canary}
      remove: [x-debug]
  backends:
  - cluster: b-v1
    weight: 90
  - cluster: b-v2
    weight: 10
";

#[test]
fn route_rules_load_in_order_with_the_shorthand_backends_last() {
    let snapshot = load_str("routes.yaml", RULES).unwrap();
    let route = &snapshot.routes["b"];
    assert_eq!(route.rules.len(), 2);
    let first = &route.rules[0];
    assert_eq!(first.matches.path_prefix.as_deref(), Some("/v2/"));
    assert_eq!(first.matches.method.as_deref(), Some("POST"));
    assert_eq!(first.matches.headers[0].regex.as_deref(), Some("true|yes"));
    assert_eq!(first.timeout, Some(std::time::Duration::from_secs(2)));
    assert_eq!(first.request_headers.add["x-route"], "canary");
    assert_eq!(first.request_headers.remove, vec!["x-debug".to_string()]);
    assert!(route.rules[1].matches.is_empty());
    assert_eq!(route.rules[1].backends[1].weight, 10);
}

#[test]
fn a_bad_header_regex_names_the_route_and_field() {
    let err = load_str("routes.yaml", &RULES.replace("true|yes", "(unclosed")).unwrap_err();
    assert_eq!(err.line, Some(11), "{err}");
    assert!(
        err.message.starts_with(
            "route \"b\": rules[0].match.headers[0].regex: invalid regex \"(unclosed\""
        ),
        "{err}"
    );
}

#[test]
fn path_and_prefix_together_or_without_a_slash_are_refused() {
    let both = RULES.replace(
        "      pathPrefix: /v2/",
        "      pathPrefix: /v2/\n      path: /v2/x",
    );
    let err = load_str("routes.yaml", &both).unwrap_err();
    assert!(
        err.message
            .contains("rules[0].match: give path or pathPrefix, not both"),
        "{err}"
    );
    let slashless = RULES.replace("pathPrefix: /v2/", "pathPrefix: v2");
    let err = load_str("routes.yaml", &slashless).unwrap_err();
    assert!(
        err.message
            .contains("rules[0].match.pathPrefix: must start with '/'"),
        "{err}"
    );
}

#[test]
fn an_unknown_rule_field_is_refused_with_its_position() {
    let typo = RULES.replace("    timeout: 2s", "    timout: 2s");
    let err = load_str("routes.yaml", &typo).unwrap_err();
    assert!(err.message.contains("unknown field `timout`"), "{err}");
    assert!(err.line.is_some(), "{err}");
}

#[test]
fn an_endpoint_weight_above_the_limit_is_refused_naming_the_field() {
    let text = "apiVersion: outrigger.dev/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec:\n  endpoints: [{address: 127.0.0.1:1, weight: 4000000000}]\n";
    let err = load_str("mesh.yaml", text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mesh.yaml:1:1: cluster \"b\": spec.endpoints[].weight: at most 10000"
    );
}

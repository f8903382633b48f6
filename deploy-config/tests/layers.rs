//! Parsing with lines, merge policies, conflicts, explain and typed extraction.

use deploy_config::{
    ArrayPolicy, ConfigError, Format, Layers, MergePolicy, Node, NullPolicy, Value, extract, parse,
};
use proptest::prelude::*;
use serde::Deserialize;

fn toml(text: &str, name: &str) -> Node {
    parse(text, Format::Toml, name, &format!("{name}.toml")).expect("valid TOML")
}

fn yaml(text: &str, name: &str) -> Node {
    parse(text, Format::Yaml, name, &format!("{name}.yaml")).expect("valid YAML")
}

fn merged(layers: Vec<(Node, MergePolicy)>) -> Node {
    let mut all = Layers::new();
    for (layer, policy) in layers {
        all.push(layer, policy);
    }
    all.merge().expect("no conflicts")
}

#[test]
fn every_format_records_the_line_of_each_value() {
    let tree = toml(
        "title = \"x\"\n\n[server]\nport = 8080\nhosts = [\"a\", \"b\"]\n",
        "base",
    );
    assert_eq!(tree.get("server.port").unwrap().origin.line, Some(4));
    assert_eq!(tree.get("server.hosts.1").unwrap().origin.line, Some(5));
    assert_eq!(
        tree.get("title").unwrap().origin.to_string(),
        "base (base.toml:1)"
    );
    let tree = yaml("server:\n  port: 9090\n  tls:\n    enabled: true\n", "prod");
    assert_eq!(tree.get("server.tls.enabled").unwrap().origin.line, Some(4));
    assert_eq!(tree.get("server.tls.enabled").unwrap().value, Value::Bool(true));
    let tree = parse(
        "{\n  \"server\": {\n    \"port\": 7070\n  }\n}\n",
        Format::Json,
        "json",
        "c.json",
    )
    .unwrap();
    assert_eq!(tree.get("server.port").unwrap().value, Value::Integer(7070));
    assert_eq!(tree.get("server.port").unwrap().origin.line, Some(3));
}

#[test]
fn malformed_files_report_file_and_line() {
    let cases = [
        (Format::Toml, "[server]\nport = = 1\n", 2),
        (Format::Yaml, "server:\n  port: [1, 2\n", 3),
        (Format::Json, "{\n  \"a\": 1,\n  \"b\": }\n", 3),
    ];
    for (format, text, line) in cases {
        match parse(text, format, "bad", "bad.cfg") {
            Err(ConfigError::Parse {
                file, line: found, ..
            }) => {
                assert_eq!(file, "bad.cfg");
                assert!(
                    found.abs_diff(line) <= 1,
                    "{format:?}: line {found}, expected about {line}"
                );
            }
            other => panic!("{format:?}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn tables_merge_scalars_replace_and_nulls_unset_or_stay() {
    let base = toml("[db]\nhost = \"localhost\"\nport = 5432\npool = 5\n", "base");
    let prod = yaml("db:\n  host: db.prod\n  pool: null\n", "prod");
    let tree = merged(vec![
        (base.clone(), MergePolicy::default()),
        (prod.clone(), MergePolicy::default()),
    ]);
    assert_eq!(
        tree.get("db.host").unwrap().value,
        Value::String("db.prod".into())
    );
    assert_eq!(tree.get("db.port").unwrap().origin.source.as_ref(), "base");
    assert!(tree.get("db.pool").is_none(), "an explicit null unsets");
    let keep = MergePolicy {
        nulls: NullPolicy::Keep,
        ..MergePolicy::default()
    };
    let tree = merged(vec![(base, MergePolicy::default()), (prod, keep)]);
    assert_eq!(tree.get("db.pool").unwrap().value, Value::Null);
}

#[test]
fn arrays_replace_append_or_merge_by_key() {
    let base = toml(
        "ports = [80, 443]\n[[routes]]\nname = \"api\"\ntimeout = 5\n[[routes]]\nname = \"web\"\ntimeout = 10\n",
        "base",
    );
    let over = yaml(
        "ports: [8080]\nroutes:\n  - name: api\n    timeout: 30\n  - name: admin\n    timeout: 1\n",
        "over",
    );
    let replaced = merged(vec![
        (base.clone(), MergePolicy::default()),
        (over.clone(), MergePolicy::default()),
    ]);
    assert_eq!(
        extract::<Vec<i64>>(replaced.get("ports").unwrap()).unwrap(),
        vec![8080]
    );
    let appended = merged(vec![
        (base.clone(), MergePolicy::default()),
        (
            over.clone(),
            MergePolicy {
                arrays: ArrayPolicy::Append,
                ..MergePolicy::default()
            },
        ),
    ]);
    assert_eq!(
        extract::<Vec<i64>>(appended.get("ports").unwrap()).unwrap(),
        vec![80, 443, 8080]
    );
    let by_name = MergePolicy::default().at("routes", ArrayPolicy::MergeByKey("name".into()));
    let tree = merged(vec![(base, MergePolicy::default()), (over, by_name)]);
    #[derive(Deserialize, Debug, PartialEq)]
    struct Route {
        name: String,
        timeout: u32,
    }
    let routes: Vec<Route> = extract(tree.get("routes").unwrap()).unwrap();
    let summary: Vec<(&str, u32)> = routes
        .iter()
        .map(|route| (route.name.as_str(), route.timeout))
        .collect();
    assert_eq!(summary, vec![("api", 30), ("web", 10), ("admin", 1)]);
    assert_eq!(
        extract::<Vec<i64>>(tree.get("ports").unwrap()).unwrap(),
        vec![8080],
        "other arrays still replace"
    );
}

#[test]
fn type_conflicts_name_both_sources_and_all_are_reported() {
    let base = toml("[server]\nport = 80\n[log]\nlevel = \"info\"\n", "base");
    let bad = yaml("server: oops\nlog:\n  level:\n    nested: true\n", "bad");
    let mut layers = Layers::new();
    layers.push(base, MergePolicy::default());
    layers.push(bad, MergePolicy::default());
    let errors = layers.merge().unwrap_err().0;
    assert_eq!(errors.len(), 2, "{errors:?}");
    let message = errors[1].to_string();
    assert!(
        message.contains("`server`") && message.contains("base.toml:1") && message.contains("bad.yaml:1"),
        "{message}"
    );
}

#[test]
fn explain_shows_every_layer_that_set_a_key() {
    let mut layers = Layers::new();
    layers.push(toml("[server]\nport = 80\n", "base"), MergePolicy::default());
    layers.push(yaml("other: 1\n", "middle"), MergePolicy::default());
    layers.push(yaml("server:\n  port: 8443\n", "prod"), MergePolicy::default());
    let stack: Vec<String> = layers
        .explain("server.port")
        .iter()
        .map(|entry| format!("{} = {:?}", entry.origin, entry.value))
        .collect();
    assert_eq!(
        stack,
        [
            "base (base.toml:2) = Integer(80)",
            "prod (prod.yaml:2) = Integer(8443)"
        ]
    );
}

#[test]
fn extraction_errors_name_the_key_the_type_and_the_source() {
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Server {
        port: u16,
        host: String,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct App {
        server: Server,
    }
    let tree = merged(vec![(
        toml("[server]\nhost = \"a\"\nport = \"eighty\"\n", "base"),
        MergePolicy::default(),
    )]);
    let error = extract::<App>(&tree).unwrap_err().to_string();
    assert!(
        error.contains("server.port") && error.contains("u16") && error.contains("base.toml:3"),
        "{error}"
    );
    let tree = merged(vec![(
        toml("[server]\nport = 80\n", "base"),
        MergePolicy::default(),
    )]);
    let error = extract::<App>(&tree).unwrap_err().to_string();
    assert!(error.contains("host") && error.contains("missing"), "{error}");
}

fn layer() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-c]{0,3}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-c]", inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_layers_merge_or_report_conflicts_without_panicking(layers in proptest::collection::vec(layer(), 1..5), key in prop_oneof![Just(ArrayPolicy::Replace), Just(ArrayPolicy::Append), Just(ArrayPolicy::MergeByKey("a".into()))]) {
        let mut all = Layers::new();
        for (index, value) in layers.iter().enumerate() {
            let origin = deploy_config::Origin::source(format!("layer {index}"));
            all.push(Node::from_json(value, &origin), MergePolicy { arrays: key.clone(), ..MergePolicy::default() });
        }
        match all.merge() {
            Ok(tree) => { let _ = tree.leaves(); let _ = all.explain("a.b"); }
            Err(errors) => prop_assert!(!errors.0.is_empty()),
        }
        // And the text forms parse or fail cleanly.
        let text = serde_json::to_string(&layers[0]).unwrap();
        let _ = parse(&text, Format::Json, "p", "p.json");
        let _ = parse(&text, Format::Yaml, "p", "p.yaml");
        let _ = parse(&text, Format::Toml, "p", "p.toml");
    }
}

//! The layers of the host crate, checked: a module imports only modules of
//! its own layer or below, and no import circle runs between modules.
//! ARCHITECTURE.md ("Layers") explains each layer.

/// Top-level modules by layer, lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "clock",
            "histogram",
            "access_log",
            "logging",
            "proxy_protocol",
            "listener",
            "config",
            "tls",
            "acme",
            "demo",
            "layers",
            "workers",
            "handover",
            "overload",
        ],
    ),
    ("runtime", &["plugin"]),
    ("pools", &["upstream", "health", "discovery"]),
    ("pipeline", &["pipeline"]),
    ("services", &["l4", "l7", "udp"]),
    ("control", &["server", "upgrade", "admin", "metrics", "devkit", "app", "cli"]),
];

/// The layer of a top-level module.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Top-level module -> the top-level modules it names as `crate::NAME`
    /// (or `super::NAME` from a file directly under `src/`).
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files {
            let rel = file.strip_prefix(&src).unwrap();
            let first = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
            if first == "lib" || first == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let names = graph.entry(first.clone()).or_default();
            for (i, _) in text.match_indices("crate::") {
                let before = &text[..i];
                if before.ends_with('$') || before.ends_with("weir_") {
                    continue;
                }
                let name: String =
                    text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if name != first && layer_of(&name).is_some() {
                    names.insert(name);
                }
            }
        }
        graph
    }

    #[test]
    fn every_module_has_a_layer() {
        let unknown: Vec<String> = imports().into_keys().filter(|m| layer_of(m).is_none()).collect();
        assert!(unknown.is_empty(), "modules with no layer in layers::LAYERS: {unknown:?}");
    }

    #[test]
    fn imports_point_down_or_across_never_up() {
        let mut upward = Vec::new();
        for (module, names) in imports() {
            let Some(own) = layer_of(&module) else { continue };
            for name in names {
                if layer_of(&name).is_some_and(|l| l > own) {
                    upward.push(format!(
                        "{module} ({}) -> {name} ({})",
                        LAYERS[own].0,
                        LAYERS[layer_of(&name).unwrap()].0
                    ));
                }
            }
        }
        assert!(upward.is_empty(), "imports that reach up a layer: {upward:#?}");
    }

    #[test]
    fn no_import_circles_between_modules() {
        let graph = imports();
        // Depth-first search; a node met again while on the path closes a circle.
        fn visit<'a>(
            node: &'a str,
            graph: &'a BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|n| *n == node) {
                return Some(path[at..].iter().map(|s| s.to_string()).chain([node.to_string()]).collect());
            }
            if !done.insert(node) {
                return None;
            }
            path.push(node);
            for next in graph.get(node).into_iter().flatten() {
                if let Some(circle) = visit(next, graph, path, done) {
                    return Some(circle);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            if let Some(circle) = visit(node, &graph, &mut Vec::new(), &mut done) {
                panic!("import circle: {}", circle.join(" -> "));
            }
        }
    }
}

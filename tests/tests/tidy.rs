//! Tidy: the shape of `gateway/src` that ARCHITECTURE.md promises, checked
//! from the source text on every run.
//!
//! The graph is the one `crate::` paths draw between modules (a file is a
//! module; `super::` and test modules are left out): it has no cycle, and
//! the folders it groups the modules into have none either; `config` (plain
//! data at the bottom) and `ops::metrics` (a leaf) import no other module;
//! only a handful of files sit at the crate's root. Everything is read as
//! text, so a failure names the files and the paths that tie them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn gateway_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read gateway/src") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The module a file is: `lib.rs` and `main.rs` the root (""), `a/mod.rs`
/// `a`, `a/b.rs` `a::b`.
fn module_of(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).expect("under gateway/src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "lib.rs" | "main.rs" | "mod.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_string()),
    }
    parts.join("::")
}

/// The code of a file that the crate is built from: whole-line comments
/// and the trailing `#[cfg(test)] mod tests` left out.
fn built_code(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if !trimmed.starts_with("//") {
            code.push_str(line);
            code.push('\n');
        }
    }
    code
}

/// Every path written after `crate::` in `code`, a grouped import
/// (`crate::a::{b, c::d}`) giving one path per entry.
fn crate_paths(code: &str) -> Vec<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        let end = rest.find(|c: char| !is_path_char(c)).unwrap_or(rest.len());
        let stem = rest[..end].trim_end_matches(':');
        if rest[end..].starts_with('{') {
            let close = rest[end..]
                .find('}')
                .map_or(rest.len(), |close| end + close);
            for entry in rest[end + 1..close].split(',') {
                let entry = entry.trim();
                if !entry.is_empty() {
                    paths.push(
                        format!("{stem}::{entry}")
                            .trim_start_matches("::")
                            .to_string(),
                    );
                }
            }
        } else {
            paths.push(stem.to_string());
        }
    }
    paths
}

/// The longest known module a path starts with.
fn target_module<'m>(path: &str, modules: &'m BTreeSet<String>) -> Option<&'m String> {
    modules
        .iter()
        .filter(|module| {
            !module.is_empty()
                && (path == module.as_str() || path.starts_with(&format!("{module}::")))
        })
        .max_by_key(|module| module.len())
}

/// Module → (module it uses → one path that says so).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn gateway_graph() -> Graph {
    let root = gateway_src();
    let files = rust_files(&root);
    let modules: BTreeSet<String> = files.iter().map(|file| module_of(&root, file)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let from = module_of(&root, file);
        let text = std::fs::read_to_string(file).expect("read a source file");
        let edges = graph.entry(from.clone()).or_default();
        for path in crate_paths(&built_code(&text)) {
            if let Some(to) = target_module(&path, &modules) {
                if *to != from {
                    edges
                        .entry(to.clone())
                        .or_insert_with(|| format!("crate::{path}"));
                }
            }
        }
    }
    graph
}

/// A cycle of `graph`, if it has one, as the nodes around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|open| open == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn describe(cycle: &[String], graph: &Graph) -> String {
    cycle
        .windows(2)
        .map(|pair| {
            let why = graph
                .get(&pair[0])
                .and_then(|edges| edges.get(&pair[1]))
                .map_or(String::new(), |path| format!(" ({path})"));
            format!("{} -> {}{why}", pair[0], pair[1])
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = gateway_graph();
    assert!(graph.len() > 20, "read too few modules: {:?}", graph.keys());
    let plain: BTreeMap<String, BTreeSet<String>> = graph
        .iter()
        .map(|(from, edges)| (from.clone(), edges.keys().cloned().collect()))
        .collect();
    if let Some(cycle) = find_cycle(&plain) {
        panic!("import cycle: {}", describe(&cycle, &graph));
    }
}

#[test]
fn the_folders_have_no_cycle_either() {
    let folder = |module: &str| module.split("::").next().unwrap_or("").to_string();
    let graph = gateway_graph();
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut why: Graph = Graph::new();
    for (from, edges) in &graph {
        for (to, path) in edges {
            let (from_folder, to_folder) = (folder(from), folder(to));
            if from_folder != to_folder && !from_folder.is_empty() {
                folders
                    .entry(from_folder.clone())
                    .or_default()
                    .insert(to_folder.clone());
                why.entry(from_folder.clone())
                    .or_default()
                    .entry(to_folder)
                    .or_insert_with(|| format!("{from}: {path}"));
            }
        }
    }
    if let Some(cycle) = find_cycle(&folders) {
        panic!("folder cycle: {}", describe(&cycle, &why));
    }
}

#[test]
fn config_and_metrics_sit_at_the_bottom() {
    let graph = gateway_graph();
    for bottom in ["config", "ops::metrics", "ops::clock"] {
        let edges = graph.get(bottom).expect("the module exists");
        assert!(
            edges.is_empty(),
            "{bottom} must import no other module of the gateway, but uses {edges:?}"
        );
    }
}

#[test]
fn only_a_handful_of_files_sit_at_the_root() {
    let root = gateway_src();
    let at_root: Vec<String> = std::fs::read_dir(&root)
        .expect("read gateway/src")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file())
        .map(|path| {
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        at_root.len() <= 6,
        "gateway/src holds {} files at its root: {at_root:?}; put new modules in the folder of their concern",
        at_root.len()
    );
}

#[test]
fn the_reader_sees_paths_the_way_the_compiler_does() {
    let code = built_code(
        "use crate::a::b::C;\n// use crate::commented::Out;\nlet x = crate::d::e(1);\nuse crate::f::{g, h::I};\n$crate::macro_path\n#[cfg(test)]\nmod tests {\n    use crate::only::in_tests;\n}\n",
    );
    assert_eq!(
        crate_paths(&code),
        ["a::b::C", "d::e", "f::g", "f::h::I"].map(String::from)
    );
    let modules: BTreeSet<String> = ["", "a", "a::b", "f"].map(String::from).into();
    assert_eq!(
        target_module("a::b::C", &modules).map(String::as_str),
        Some("a::b")
    );
    assert_eq!(
        target_module("a::bc", &modules).map(String::as_str),
        Some("a")
    );
    assert_eq!(target_module("zz", &modules), None);
    let cyclic: BTreeMap<String, BTreeSet<String>> = [
        ("x".to_string(), BTreeSet::from(["y".to_string()])),
        ("y".to_string(), BTreeSet::from(["x".to_string()])),
    ]
    .into();
    assert_eq!(
        find_cycle(&cyclic),
        Some(["x", "y", "x"].map(String::from).to_vec())
    );
}

//! Imports flow one way: the graph of our modules has no loop (STYLE.md habit 13).
//!
//! The rule this test enforces, read from the sources under `src/` (the library; `main.rs` is the
//! binary and only uses the library):
//!
//! - A **node** is a top-level module (`config`, `nexudus`, `sync`, `schedule`, …): a file
//!   `src/a.rs` or a folder `src/a/`. Every file of a folder belongs to its folder's node, so a
//!   submodule using its parent (`super::`) or a sibling is no edge, and a loop that passes through
//!   two files of one folder is still a loop.
//! - The one exception is a **leaf**: a submodule file that refers to nothing of ours outside
//!   itself (e.g. `schedule::cron`, the cron parsing `config` uses). It is a node of its own, since
//!   nothing can loop through a module that imports nothing. `schedule::cron` must stay one.
//! - An **edge** `a -> b` is any path in `a`'s code that resolves to `b`: `crate::b::…`,
//!   `crate::{b, …}`, or a `super::` chain that climbs to the crate root. Test code counts too
//!   (`#[cfg(test)]` modules are part of their module: a unit test that needs another module's
//!   internals belongs there or in `tests/`). Comments, doc links and string literals do not count.
//!
//! The graph of nodes must be acyclic; when it is not, the test names one loop, file by file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that must stay leaves (STYLE.md: "cron parsing in a leaf module").
const REQUIRED_LEAVES: &[&str] = &["schedule::cron"];

#[test]
fn our_modules_import_each_other_without_a_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect_rs(&src, &mut files);
    let sources: Vec<(Vec<String>, String)> = files
        .iter()
        .filter_map(|path| {
            let module = module_path(&src, path)?;
            let text = std::fs::read_to_string(path).expect("source file is readable");
            Some((module, text))
        })
        .collect();
    assert!(
        sources.len() > 10,
        "found only {} modules under {}",
        sources.len(),
        src.display()
    );
    let graph = Graph::build(&sources);
    println!("{graph}");
    for leaf in REQUIRED_LEAVES {
        assert!(
            graph.leaves.contains(*leaf),
            "{leaf} must exist and import nothing of ours (so config can use it without a loop); \
             it refers to: {:?}",
            graph.refs_of(leaf)
        );
    }
    if let Some(cycle) = graph.find_cycle() {
        panic!(
            "import loop between our modules: {}\n{}\nthe whole graph:\n{graph}",
            cycle.join(" -> "),
            graph.explain(&cycle)
        );
    }
}

#[test]
fn the_check_finds_a_loop_and_accepts_a_leaf() {
    let file = |m: &str, text: &str| {
        (
            m.split("::").map(String::from).collect::<Vec<_>>(),
            text.to_string(),
        )
    };
    // config -> schedule (mod.rs) -> sync -> config: a loop.
    let looped = [
        file("config", "fn f() { crate::schedule::parse(\"\"); }"),
        file("schedule", "use crate::sync::run_once;"),
        file(
            "sync",
            "use crate::{config::Config, mapper};\n// crate::nowhere in a comment",
        ),
        file(
            "mapper",
            "let s = \"crate::schedule\"; let r = r#\"crate::sync\"#;",
        ),
    ];
    let graph = Graph::build(&looped);
    let cycle = graph.find_cycle().expect("the loop is found");
    assert_eq!(cycle, ["config", "schedule", "sync", "config"]);
    assert!(graph.refs_of("mapper").is_empty(), "strings are not code");

    // The same, but config uses a leaf inside schedule: no loop.
    let leafed = [
        file("config", "fn f() { crate::schedule::cron::parse(\"\"); }"),
        file(
            "schedule",
            "mod cron; use crate::sync::run_once; use cron::parse;",
        ),
        file(
            "schedule::cron",
            "use croner::Cron; fn parse() -> Cron { todo!() }",
        ),
        file("sync", "use crate::config::Config;"),
    ];
    let graph = Graph::build(&leafed);
    assert!(graph.leaves.contains("schedule::cron"));
    assert_eq!(graph.find_cycle(), None, "{graph}");

    // A submodule reaching the crate root through `super::super::`, inside a test module.
    let climbed = [
        file("a", "use crate::b::X;"),
        file(
            "b::c",
            "#[cfg(test)] mod tests { use super::super::super::a::Y; }",
        ),
    ];
    let graph = Graph::build(&climbed);
    assert_eq!(
        graph.find_cycle(),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` -> `["a", "b"]`, `src/a/mod.rs` -> `["a"]`; `lib.rs` and `main.rs` are no module.
fn module_path(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && matches!(stem, "lib" | "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    Some(parts)
}

struct Graph {
    /// Node -> the nodes it refers to, each with the first file that does.
    edges: BTreeMap<String, BTreeMap<String, String>>,
    leaves: BTreeSet<String>,
    /// File module -> the top-level modules its code refers to (other than its own).
    refs: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn build(sources: &[(Vec<String>, String)]) -> Graph {
        let mut files = BTreeMap::new();
        for (module, text) in sources {
            files.insert(
                module.join("::"),
                (module.clone(), scan(module, &strip(text))),
            );
        }
        // A submodule file whose paths all stay inside itself is a leaf.
        let leaves: BTreeSet<String> = files
            .iter()
            .filter(|(_, (module, scan))| {
                module.len() > 1
                    && !scan.leaves_file
                    && scan.paths.iter().all(|p| p.starts_with(module))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let node_of = |path: &[String]| -> String {
            leaves
                .iter()
                .find(|leaf| {
                    let leaf: Vec<&str> = leaf.split("::").collect();
                    path.len() >= leaf.len() && path.iter().zip(&leaf).all(|(a, b)| a == b)
                })
                .cloned()
                .unwrap_or_else(|| path[0].clone())
        };
        let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut refs = BTreeMap::new();
        for (name, (module, scan)) in &files {
            let from = node_of(module);
            edges.entry(from.clone()).or_default();
            let found: &mut BTreeSet<String> = refs.entry(name.clone()).or_default();
            for path in &scan.paths {
                if path[0] != module[0] {
                    found.insert(path[0].clone());
                }
                let to = node_of(path);
                if to != from {
                    edges
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_insert_with(|| name.clone());
                }
            }
        }
        Graph {
            edges,
            leaves,
            refs,
        }
    }

    fn refs_of(&self, module: &str) -> BTreeSet<String> {
        self.refs.get(module).cloned().unwrap_or_default()
    }

    /// One loop, as `a -> b -> … -> a`, if there is any.
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        fn visit(
            graph: &Graph,
            node: &str,
            marks: &mut BTreeMap<String, Mark>,
            stack: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            marks.insert(node.to_string(), Mark::Open);
            stack.push(node.to_string());
            for next in graph.edges.get(node).into_iter().flat_map(|e| e.keys()) {
                match marks.get(next).copied().unwrap_or(Mark::New) {
                    Mark::Open => {
                        let start = stack.iter().position(|n| n == next)?;
                        let mut cycle = stack[start..].to_vec();
                        cycle.push(next.clone());
                        return Some(cycle);
                    }
                    Mark::New => {
                        if let Some(cycle) = visit(graph, next, marks, stack) {
                            return Some(cycle);
                        }
                    }
                    Mark::Done => {}
                }
            }
            stack.pop();
            marks.insert(node.to_string(), Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        for node in self.edges.keys() {
            if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
                let mut stack = Vec::new();
                if let Some(cycle) = visit(self, node, &mut marks, &mut stack) {
                    return Some(cycle);
                }
            }
        }
        None
    }

    /// Which file makes each step of a loop.
    fn explain(&self, cycle: &[String]) -> String {
        cycle
            .windows(2)
            .map(|w| {
                let file = self.edges[&w[0]].get(&w[1]).map_or("?", String::as_str);
                format!("  {} -> {}: in {}", w[0], w[1], file)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl std::fmt::Display for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (node, to) in &self.edges {
            let to: Vec<&str> = to.keys().map(String::as_str).collect();
            writeln!(f, "{node:>16} -> {}", to.join(", "))?;
        }
        Ok(())
    }
}

/// What a file's code (comments and literals stripped) refers to.
struct Scan {
    /// Every path from the crate root, in full (`crate::{a, b::c}` gives `[a]` and `[b, c]`;
    /// `super::` chains that climb to the root are resolved).
    paths: Vec<Vec<String>>,
    /// Whether a `super::` chain leaves the file (to its parent or a sibling).
    leaves_file: bool,
}

fn scan(module: &[String], code: &str) -> Scan {
    let tokens = tokens(code);
    let mut found = Scan {
        paths: Vec::new(),
        leaves_file: false,
    };
    // Inline `mod name {` blocks: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if tokens.get(i + 2).is_some_and(|t| t == "{") => {
                inline.push((tokens[i + 1].clone(), depth + 1));
            }
            _ => {}
        }
        let starts_path = i == 0 || tokens[i - 1] != "::";
        if !(starts_path
            && (t == "crate" || t == "super")
            && tokens.get(i + 1).is_some_and(|t| t == "::"))
        {
            i += 1;
            continue;
        }
        let mut base: Vec<String> = Vec::new();
        let mut j = i;
        if t == "crate" {
            j += 2;
        } else {
            base = module.to_vec();
            base.extend(inline.iter().map(|(n, _)| n.clone()));
            while tokens.get(j).is_some_and(|t| t == "super")
                && tokens.get(j + 1).is_some_and(|t| t == "::")
            {
                base.pop();
                j += 2;
            }
            found.leaves_file |= base.len() < module.len();
        }
        for rest in group_or_path(&tokens, j) {
            let mut path = base.clone();
            path.extend(rest);
            if !path.is_empty() && path.last().is_none_or(|s| s != "self") {
                found.paths.push(path);
            }
        }
        i = j;
    }
    found
}

/// At `tokens[at]`: `a::b…` gives `[[a, b, …]]`; `{a::b, c, …}` gives one path per item (a
/// nested group ends the item's path where it opens).
fn group_or_path(tokens: &[String], at: usize) -> Vec<Vec<String>> {
    let is_ident = |t: &str| {
        t.chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    };
    let path_at = |k: usize| -> Option<Vec<String>> {
        let mut segs = vec![tokens.get(k).filter(|t| is_ident(t))?.clone()];
        let mut k = k + 1;
        while tokens.get(k).is_some_and(|t| t == "::")
            && let Some(next) = tokens.get(k + 1).filter(|t| is_ident(t))
        {
            segs.push(next.clone());
            k += 2;
        }
        Some(segs)
    };
    if tokens.get(at).is_some_and(|t| t == "{") {
        let mut out = Vec::new();
        let mut depth = 0;
        let mut expect_item = true;
        for (k, t) in tokens.iter().enumerate().skip(at) {
            match t.as_str() {
                "{" => depth += 1,
                "}" => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                "," if depth == 1 => expect_item = true,
                _ if depth == 1 && expect_item => {
                    expect_item = false;
                    out.extend(path_at(k));
                }
                _ => {}
            }
        }
        out
    } else {
        path_at(at).into_iter().collect()
    }
}

/// Identifiers, `::`, and single punctuation characters.
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The code with comments, string and character literals blanked out.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut nest = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    nest += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    nest -= 1;
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if !prev_ident
            && (c[i] == 'r' || (c[i] == 'b' && c.get(i + 1) == Some(&'r')))
            && raw_string_hashes(&c, i + if c[i] == 'b' { 2 } else { 1 }).is_some()
        {
            let open = i + if c[i] == 'b' { 2 } else { 1 };
            let hashes = raw_string_hashes(&c, open).unwrap_or(0);
            i = open + hashes + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    i += hashes + 1;
                    break;
                }
                i += 1;
            }
            out.push_str(" \"\" ");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str(" \"\" ");
        } else if c[i] == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str(" ' ");
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str(" ' ");
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// At `at`: `#…#"` opens a raw string; the number of `#`.
fn raw_string_hashes(c: &[char], at: usize) -> Option<usize> {
    let mut k = at;
    while c.get(k) == Some(&'#') {
        k += 1;
    }
    (c.get(k) == Some(&'"')).then_some(k - at)
}

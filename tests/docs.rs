//! Every relative link and anchor in the README and `docs/` resolves: the file or directory
//! exists, and a `#anchor` names a heading of the target Markdown file (GitHub's slugs:
//! lower-case, punctuation dropped, spaces to hyphens, `-1`, `-2` for repeats). Also holds the
//! README to its job as the front door: under 200 lines, with a map of every page of `docs/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, deploy/README.md and every Markdown file under docs/.
fn documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md"), root().join("deploy/README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// The lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor for a heading text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let base = slug(heading.trim_start_matches('#'));
        let mut candidate = base.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

/// `[text](target)` links in prose, inline code spans removed first.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut clean = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                clean.push('`');
            } else if !in_code {
                clean.push(c);
            }
        }
        let mut rest = clean.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    out
}

fn check(doc: &Path, target: &str) -> Result<(), String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return Ok(());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        doc.to_path_buf()
    } else {
        doc.parent().expect("a parent").join(path)
    };
    if !file.exists() {
        return Err(format!("{target}: {} does not exist", file.display()));
    }
    if let Some(anchor) = anchor {
        if file.extension().is_none_or(|e| e != "md") {
            return Err(format!(
                "{target}: an anchor into a file that is not Markdown"
            ));
        }
        let text = std::fs::read_to_string(&file).expect("read link target");
        if !anchors(&text).contains(anchor) {
            return Err(format!(
                "{target}: no heading #{anchor} in {}",
                file.display()
            ));
        }
    }
    Ok(())
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("read document");
        for target in links(&text) {
            checked += 1;
            if let Err(e) = check(&doc, &target) {
                broken.push(format!("{}: {e}", doc.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_a_front_door_with_a_map_of_every_page() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("read README");
    let lines = readme.lines().count();
    assert!(
        lines < 200,
        "README.md has {lines} lines; move detail into docs/"
    );
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|t| t.split('#').next().unwrap_or_default().to_string())
        .collect();
    for doc in documents()
        .iter()
        .filter(|d| d.starts_with(root().join("docs")))
    {
        let rel = doc
            .strip_prefix(root())
            .expect("under the root")
            .display()
            .to_string();
        assert!(linked.contains(&rel), "README.md does not link {rel}");
    }
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(slug(" Mapping (defaults)"), "mapping-defaults");
    assert_eq!(
        slug(" `--status` and exit codes"),
        "--status-and-exit-codes"
    );
    assert_eq!(slug(" nevisIDM in the field"), "nevisidm-in-the-field");
    let a = anchors("# A\n## Notes\n```\n# not a heading\n```\n## Notes\n");
    assert_eq!(
        a,
        ["a", "notes", "notes-1"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

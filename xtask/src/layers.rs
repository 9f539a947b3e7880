//! `cargo xtask layers`: the agent's modules stay in their layers.
//!
//! Every file of `session-agent/src` belongs to a unit of [`UNITS`] (a file,
//! or a folder and all it holds), each unit to a layer of [`LAYERS`]. The
//! check reads every `crate::`, `super::`, `self::` and `session_agent::`
//! path of every file (in `use` trees, in code and in macro arguments) and
//! fails on:
//! - an import from a lower layer up to a higher one, or between two units
//!   of a layer whose units stay apart (the front ends; the features);
//! - files that import each other in a circle, inside a folder too (a
//!   `mod` declaration is not an import, `pub use child::X` is);
//! - the CLI naming anything of the agent but `session_api`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// A layer: its rank (higher imports lower), its name, and whether its units
/// must not import each other.
pub struct Layer {
    pub rank: u8,
    pub name: &'static str,
    pub apart: bool,
}

/// The layers, top to bottom.
pub const LAYERS: &[Layer] = &[
    Layer {
        rank: 7,
        name: "cli",
        apart: false,
    },
    Layer {
        rank: 6,
        name: "wiring",
        apart: false,
    },
    Layer {
        rank: 5,
        name: "front ends",
        apart: true,
    },
    Layer {
        rank: 4,
        name: "front ends' ground",
        apart: false,
    },
    Layer {
        rank: 3,
        name: "features",
        apart: true,
    },
    Layer {
        rank: 2,
        name: "core",
        apart: false,
    },
    Layer {
        rank: 1,
        name: "kernel side",
        apart: false,
    },
    Layer {
        rank: 0,
        name: "os",
        apart: false,
    },
];

/// Every unit of `session-agent/src` (a file, or a folder ending in `/`) and its layer.
pub const UNITS: &[(&str, &str)] = &[
    ("main.rs", "cli"),
    ("cli.rs", "cli"),
    ("ctl.rs", "cli"),
    ("ctl/", "cli"),
    ("docs/", "cli"),
    ("passwd.rs", "cli"),
    ("config_file.rs", "wiring"),
    ("daemon.rs", "wiring"),
    ("options.rs", "wiring"),
    ("services.rs", "wiring"),
    ("admin/", "front ends"),
    ("api/", "front ends"),
    ("portal/", "front ends"),
    ("web/", "front ends' ground"),
    ("history.rs", "features"),
    ("radius/", "features"),
    ("vouchers.rs", "features"),
    ("names.rs", "features"),
    ("gateway/", "core"),
    ("neigh.rs", "core"),
    ("datapath.rs", "kernel side"),
    ("dataplane/", "kernel side"),
    ("garden.rs", "kernel side"),
    ("lib.rs", "os"),
    ("error.rs", "os"),
    ("iface.rs", "os"),
    ("logging.rs", "os"),
    ("memory.rs", "os"),
    ("netlink.rs", "os"),
    ("nftables.rs", "os"),
    ("runtime.rs", "os"),
    ("sys.rs", "os"),
    ("systemd.rs", "os"),
];

/// Files of the binary crate (`main.rs` and its modules); the rest is the library.
const BINARY: &[&str] = &["main.rs", "cli.rs", "ctl.rs", "ctl/", "docs/", "passwd.rs"];
/// The CLI, which talks to the agent through `session_api` only.
const CLI: &[&str] = &["ctl.rs", "ctl/"];

/// One import: from a file, at a line, of a file.
#[derive(Debug, Clone)]
struct Import {
    from: String,
    line: usize,
    to: String,
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub imports: usize,
    pub problems: Vec<String>,
    /// unit -> unit -> imports
    pub graph: BTreeMap<String, BTreeMap<String, usize>>,
}

/// `cargo xtask layers [--graph]`.
pub fn run(root: &Path, graph: bool) -> Result<()> {
    let src = root.join("session-agent/src");
    let r = check(&src)?;
    if graph {
        print!("{}", render_graph(&r));
    }
    if !r.problems.is_empty() {
        for p in &r.problems {
            eprintln!("{p}");
        }
        bail!(
            "{} layering problem(s) in session-agent/src (the layers are in xtask/src/layers.rs, `UNITS`)",
            r.problems.len()
        );
    }
    println!(
        "layers: {} files, {} imports between them, {} layers: no import upwards, none between front ends or features, no circle",
        r.files,
        r.imports,
        LAYERS.len()
    );
    Ok(())
}

fn render_graph(r: &Report) -> String {
    let mut out = String::new();
    for (unit, to) in &r.graph {
        let list: Vec<String> = to.iter().map(|(u, n)| format!("{u} ({n})")).collect();
        let _ = writeln!(
            out,
            "{unit} [{}] -> {}",
            layer_of(unit).map_or("?", |l| l.name),
            if list.is_empty() {
                "-".into()
            } else {
                list.join(", ")
            }
        );
    }
    out
}

/// Checks the tree at `src` (a `session-agent/src`).
pub fn check(src: &Path) -> Result<Report> {
    let mut files = Vec::new();
    walk(src, src, &mut files)?;
    files.sort();
    let mut r = Report {
        files: files.len(),
        ..Report::default()
    };
    // Module paths of every file, per crate.
    let mut modules: BTreeMap<(bool, Vec<String>), String> = BTreeMap::new();
    for f in &files {
        modules.insert((in_binary(f), module_of(f)), f.clone());
    }
    let mut imports = Vec::new();
    for f in &files {
        let Some(_) = unit_of(f) else {
            r.problems.push(format!(
                "{f}: not placed in a layer: add it (or its folder) to `UNITS` in xtask/src/layers.rs"
            ));
            continue;
        };
        let text = std::fs::read_to_string(src.join(f)).with_context(|| format!("reading {f}"))?;
        let parsed = syn::parse_file(&text).with_context(|| format!("parsing {f}"))?;
        // A path may start at a module the file declares (`use routes::v1`).
        let children = parsed
            .items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Mod(m) => Some(m.ident.to_string()),
                _ => None,
            })
            .collect();
        let mut v = Paths {
            children,
            inline: Vec::new(),
            found: Vec::new(),
        };
        v.visit_file(&parsed);
        let bin = in_binary(f);
        let cli = CLI.iter().any(|c| under(f, c));
        for (segs, line) in v.found {
            let Some((to_bin, abs)) = absolute(&module_of(f), &segs, bin) else {
                continue;
            };
            if cli && !(to_bin && abs.first().is_some_and(|s| s == "ctl")) {
                r.problems.push(format!(
                    "{f}:{line}: the CLI names `{}`: it talks to the agent through session_api only",
                    segs.join("::")
                ));
                continue;
            }
            if let Some(to) = resolve(&modules, to_bin, &abs) {
                if &to != f {
                    imports.push(Import {
                        from: f.clone(),
                        line,
                        to,
                    });
                }
            }
        }
    }
    // One edge per pair of files, at its first line.
    let mut edges: BTreeMap<(String, String), usize> = BTreeMap::new();
    for i in &imports {
        let e = edges
            .entry((i.from.clone(), i.to.clone()))
            .or_insert(i.line);
        *e = (*e).min(i.line);
    }
    r.imports = edges.len();
    for ((from, to), line) in &edges {
        let (Some(a), Some(b)) = (unit_of(from), unit_of(to)) else {
            continue;
        };
        if a != b {
            *r.graph
                .entry(a.to_string())
                .or_default()
                .entry(b.to_string())
                .or_default() += 1;
        }
        r.graph.entry(b.to_string()).or_default();
        let (Some(la), Some(lb)) = (layer_of(a), layer_of(b)) else {
            continue;
        };
        if lb.rank > la.rank {
            r.problems.push(format!(
                "{from}:{line}: {from} ({}) imports {to} ({}): an import from a lower layer to a higher one",
                la.name, lb.name
            ));
        } else if lb.rank == la.rank && la.apart && a != b {
            r.problems.push(format!(
                "{from}:{line}: {from} ({}) imports {to} ({}): {} never import each other",
                la.name, lb.name, la.name
            ));
        }
    }
    let file_edges: BTreeMap<String, Vec<(String, usize)>> =
        edges.iter().fold(BTreeMap::new(), |mut m, ((a, b), l)| {
            m.entry(a.clone()).or_default().push((b.clone(), *l));
            m
        });
    for cycle in cycles(&file_edges) {
        r.problems
            .push(format!("files import each other in a circle: {cycle}"));
    }
    let unit_edges: BTreeMap<String, Vec<(String, usize)>> = r
        .graph
        .iter()
        .map(|(a, to)| (a.clone(), to.iter().map(|(b, n)| (b.clone(), *n)).collect()))
        .collect();
    for cycle in cycles(&unit_edges) {
        r.problems.push(format!(
            "units import each other in a circle (numbers: imports): {cycle}"
        ));
    }
    Ok(r)
}

/// Every `.rs` file under `dir`, relative to `base`, with `/` separators.
fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p: PathBuf = e?.path();
        if p.is_dir() {
            walk(base, &p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(base)?.to_string_lossy().replace('\\', "/");
            out.push(rel);
        }
    }
    Ok(())
}

fn under(file: &str, unit: &str) -> bool {
    if unit.ends_with('/') {
        file.starts_with(unit)
    } else {
        file == unit
    }
}

fn unit_of(file: &str) -> Option<&'static str> {
    UNITS.iter().map(|(u, _)| *u).find(|u| under(file, u))
}

fn layer_of(unit: &str) -> Option<&'static Layer> {
    let name = UNITS.iter().find(|(u, _)| *u == unit)?.1;
    LAYERS.iter().find(|l| l.name == name)
}

fn in_binary(file: &str) -> bool {
    BINARY.iter().any(|b| under(file, b))
}

/// The module path of a file within its crate (`api/routes.rs` -> api::routes).
fn module_of(file: &str) -> Vec<String> {
    let f = file.trim_end_matches(".rs");
    let mut segs: Vec<String> = f.split('/').map(String::from).collect();
    if matches!(
        segs.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        segs.pop();
    }
    segs
}

/// A path as the crate and the absolute module path it names, when it
/// names something of the agent (`crate::`, `super::`, `self::`, `session_agent::`).
/// Inline modules the path was written in come first, as `{inline}` segments.
fn absolute(file_module: &[String], segs: &[String], bin: bool) -> Option<(bool, Vec<String>)> {
    let mut base: Vec<String> = file_module.to_vec();
    let mut rest = segs;
    while let Some(s) = rest.first().filter(|s| s.starts_with('{')) {
        base.push(s.clone());
        rest = &rest[1..];
    }
    let first = rest.first()?;
    match first.as_str() {
        "crate" => Some((bin, rest[1..].to_vec())),
        "session_agent" => Some((false, rest[1..].to_vec())),
        "self" | "super" => {
            let mut at = base;
            let mut i = 0;
            while i < rest.len() && (rest[i] == "super" || rest[i] == "self") {
                if rest[i] == "super" {
                    at.pop()?;
                }
                i += 1;
            }
            at.extend(rest[i..].iter().cloned());
            // Back in the file: inline modules are the file's own.
            at.retain(|s| !s.starts_with('{'));
            Some((bin, at))
        }
        _ => None,
    }
}

/// The file a module path lands in: the longest prefix that is a module file.
fn resolve(
    modules: &BTreeMap<(bool, Vec<String>), String>,
    bin: bool,
    abs: &[String],
) -> Option<String> {
    let abs: Vec<String> = abs
        .iter()
        .filter(|s| !s.starts_with('{'))
        .cloned()
        .collect();
    (0..=abs.len())
        .rev()
        .find_map(|n| modules.get(&(bin, abs[..n].to_vec())).cloned())
}

/// Collects the paths of a file, with the inline modules they are written in.
struct Paths {
    /// Modules the file declares.
    children: BTreeSet<String>,
    inline: Vec<String>,
    found: Vec<(Vec<String>, usize)>,
}

impl Paths {
    fn push(&mut self, mut segs: Vec<String>, line: usize) {
        if self.inline.is_empty() && segs.len() > 1 && self.children.contains(&segs[0]) {
            segs.insert(0, "self".into());
        }
        if matches!(
            segs.first().map(String::as_str),
            Some("crate" | "super" | "self" | "session_agent")
        ) && segs.len() > 1
        {
            let mut full: Vec<String> = self.inline.iter().map(|m| format!("{{{m}}}")).collect();
            full.extend(segs);
            self.found.push((full, line));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, t: &syn::UseTree) {
        match t {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut s = prefix.clone();
                s.push(n.ident.to_string());
                self.push(s, n.ident.span().start().line);
            }
            syn::UseTree::Rename(n) => {
                let mut s = prefix.clone();
                s.push(n.ident.to_string());
                self.push(s, n.ident.span().start().line);
            }
            syn::UseTree::Glob(g) => {
                let mut s = prefix.clone();
                s.push("*".into());
                self.push(s, g.star_token.spans[0].start().line);
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `crate :: a :: b` sequences in a macro's tokens.
    fn tokens(&mut self, ts: TokenStream) {
        let toks: Vec<TokenTree> = ts.into_iter().collect();
        let mut i = 0;
        while i < toks.len() {
            if let TokenTree::Group(g) = &toks[i] {
                self.tokens(g.stream());
                i += 1;
                continue;
            }
            let start = match &toks[i] {
                TokenTree::Ident(id)
                    if ["crate", "super", "self", "session_agent"]
                        .contains(&id.to_string().as_str()) =>
                {
                    id.clone()
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            let mut segs = vec![start.to_string()];
            let mut j = i + 1;
            while j + 2 < toks.len() + 1 {
                match (toks.get(j), toks.get(j + 1), toks.get(j + 2)) {
                    (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(id)),
                    ) if a.as_char() == ':' && b.as_char() == ':' => {
                        segs.push(id.to_string());
                        j += 3;
                    }
                    _ => break,
                }
            }
            self.push(segs, start.span().start().line);
            i = j.max(i + 1);
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.inline.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.inline.pop();
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = p.segments.first() {
            self.push(segs, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.visit_path(&m.path);
        self.tokens(m.tokens.clone());
    }

    fn visit_attribute(&mut self, a: &'ast syn::Attribute) {
        // Doc links and `#[serde(with = "...")]` strings are not imports;
        // paths in attribute arguments are read as tokens.
        if let syn::Meta::List(l) = &a.meta {
            self.tokens(l.tokens.clone());
        }
    }
}

/// Each circle of `edges` once, as `a.rs:LINE -> b.rs:LINE -> a.rs`.
fn cycles(edges: &BTreeMap<String, Vec<(String, usize)>>) -> Vec<String> {
    // Strongly connected components (Tarjan), then one circle through each.
    struct T<'a> {
        edges: &'a BTreeMap<String, Vec<(String, usize)>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<&'a str>>,
    }
    impl<'a> T<'a> {
        fn go(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            for (w, _) in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.go(w);
                    let l = self.low[w].min(self.low[v]);
                    self.low.insert(v, l);
                } else if self.on.contains(w) {
                    let l = self.index[w].min(self.low[v]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut c = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    c.push(w);
                    if w == v {
                        break;
                    }
                }
                if c.len() > 1 {
                    self.out.push(c);
                }
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let mut nodes: BTreeSet<&str> = edges.keys().map(String::as_str).collect();
    nodes.extend(edges.values().flatten().map(|(w, _)| w.as_str()));
    for v in nodes {
        if !t.index.contains_key(v) {
            t.go(v);
        }
    }
    let mut out = Vec::new();
    for comp in t.out {
        let set: BTreeSet<&str> = comp.iter().copied().collect();
        let start = *set.iter().next().expect("a component has nodes");
        // Shortest way back to the start inside the component (BFS).
        let mut prev: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut back = None;
        while let Some(v) = queue.pop_front() {
            for (w, l) in edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !set.contains(w) {
                    continue;
                }
                if w == start {
                    back = Some((v, *l));
                    break;
                }
                if !prev.contains_key(w) {
                    prev.insert(w, (v, *l));
                    queue.push_back(w);
                }
            }
            if back.is_some() {
                break;
            }
        }
        let Some((last, line)) = back else { continue };
        let mut path = vec![(last, line)];
        let mut at = last;
        while at != start {
            let (p, l) = prev[at];
            path.push((p, l));
            at = p;
        }
        path.reverse();
        let mut s = String::new();
        for (v, l) in &path {
            let _ = write!(s, "{v}:{l} -> ");
        }
        s.push_str(start);
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of agent files in a temporary folder.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    fn problems(files: &[(&str, &str)]) -> Vec<String> {
        check(tree(files).path()).unwrap().problems
    }

    const LIB: (&str, &str) = (
        "lib.rs",
        "pub mod api; pub mod gateway; pub mod vouchers; pub mod error;",
    );

    #[test]
    fn a_layered_tree_passes() {
        let p = problems(&[
            LIB,
            (
                "main.rs",
                "mod ctl; use session_agent::api::serve; fn main() {}",
            ),
            ("ctl.rs", "use session_api::ApiClient; use crate::ctl::x;"),
            (
                "api/mod.rs",
                "mod routes; pub use routes::v1; use crate::vouchers::Desk;",
            ),
            (
                "api/routes.rs",
                "use crate::gateway::Gateway; pub fn v1() {}",
            ),
            (
                "vouchers.rs",
                "use crate::{gateway::Gateway, error::AgentError};",
            ),
            ("gateway/mod.rs", "mod poll; pub struct Gateway;"),
            (
                "gateway/poll.rs",
                "use super::Gateway; use crate::error::AgentError;",
            ),
            ("error.rs", "pub struct AgentError;"),
        ]);
        assert_eq!(p, Vec::<String>::new());
    }

    #[test]
    fn an_import_upwards_fails_naming_the_file_and_line() {
        let p = problems(&[
            LIB,
            (
                "gateway/mod.rs",
                "pub struct Gateway;\n\nuse crate::vouchers::Desk;",
            ),
            ("vouchers.rs", "pub struct Desk;"),
            ("error.rs", ""),
        ]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("gateway/mod.rs:3: ") && p[0].contains("lower layer"),
            "{p:?}"
        );
    }

    #[test]
    fn a_grouped_use_is_read_path_by_path() {
        let p = problems(&[
            LIB,
            ("error.rs", "use crate::{gateway, api::{self, x}};"),
            ("gateway/mod.rs", ""),
            ("api/mod.rs", ""),
        ]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().any(|l| l.contains("imports api/mod.rs")), "{p:?}");
        assert!(
            p.iter().any(|l| l.contains("imports gateway/mod.rs")),
            "{p:?}"
        );
    }

    #[test]
    fn a_path_in_code_and_one_in_a_macro_are_imports() {
        let p = problems(&[
            LIB,
            ("error.rs", "fn f() { crate::gateway::poll(); }"),
            (
                "gateway/mod.rs",
                "fn g() { tracing::info!(x = ?crate::vouchers::COUNT); }",
            ),
            ("vouchers.rs", ""),
        ]);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("error.rs:1:"), "{p:?}");
        assert!(p[1].starts_with("gateway/mod.rs:1:"), "{p:?}");
    }

    #[test]
    fn files_of_a_folder_that_import_each_other_fail_as_a_circle() {
        let p = problems(&[
            LIB,
            ("error.rs", ""),
            (
                "api/mod.rs",
                "mod routes;\nmod state;\npub use routes::v1;\npub struct State;",
            ),
            ("api/routes.rs", "use super::State;\npub fn v1() {}"),
            ("api/state.rs", "use super::routes::v1;"),
        ]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0],
            "files import each other in a circle: api/mod.rs:3 -> api/routes.rs:1 -> api/mod.rs"
        );
        // A glob of the parent is an import of it too.
        let p = problems(&[
            LIB,
            ("error.rs", ""),
            ("api/mod.rs", "mod routes;\npub use routes::v1;"),
            ("api/routes.rs", "use super::*;\npub fn v1() {}"),
        ]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0],
            "files import each other in a circle: api/mod.rs:2 -> api/routes.rs:1 -> api/mod.rs"
        );
    }

    #[test]
    fn a_test_module_importing_its_own_file_is_no_circle() {
        let p = problems(&[
            LIB,
            ("error.rs", "fn a() {}\n#[cfg(test)]\nmod tests { use super::*; use super::super::gateway::X; }"),
            ("gateway/mod.rs", "pub struct X;"),
        ]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("error.rs (os) imports gateway/mod.rs (core)"),
            "{p:?}"
        );
    }

    #[test]
    fn one_front_end_importing_the_other_fails() {
        let p = problems(&[
            LIB,
            ("error.rs", ""),
            ("api/mod.rs", ""),
            ("portal/mod.rs", "use crate::api::neigh;"),
        ]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("front ends never import each other"), "{p:?}");
    }

    #[test]
    fn a_file_in_no_layer_fails() {
        let p = problems(&[LIB, ("error.rs", ""), ("shiny.rs", "")]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("shiny.rs: not placed in a layer"), "{p:?}");
    }

    #[test]
    fn the_cli_naming_the_agent_fails() {
        let p = problems(&[
            LIB,
            ("error.rs", ""),
            ("main.rs", "mod ctl;"),
            ("ctl/mod.rs", "mod devices;"),
            (
                "ctl/devices.rs",
                "use session_api::DeviceView;\nuse session_agent::api::views;",
            ),
        ]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("ctl/devices.rs:2: the CLI names `session_agent::api::views`"),
            "{p:?}"
        );
    }

    #[test]
    fn the_agent_as_it_is_passes() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../session-agent/src");
        let r = check(&src).unwrap();
        assert_eq!(r.problems, Vec::<String>::new());
        assert!(
            r.files > 40 && r.imports > 100,
            "{} files, {} imports",
            r.files,
            r.imports
        );
    }
}

//! Limits on YAML that comes from packs (pack.yaml, component files), checked before
//! any value is built.
//!
//! serde builds a whole document in memory, expanding every alias into a copy of its
//! anchored node: a few kilobytes of nested aliases ("billion laughs") become
//! gigabytes, and libyaml's scanner slows down quadratically with flow nesting depth.
//! [`check`] walks libyaml's event stream once — the same parser serde uses, so both
//! see the same nodes — and stops at the first limit crossed, keeping for each anchor
//! only the size of its subtree: an alias costs what its expansion would, without
//! being expanded. Memory is proportional to the number of anchors and the nesting
//! depth, both bounded by the limits.
//!
//! The limits are operator settings (`yaml:` in the configuration). Pack YAML is
//! parsed from deep inside several stages that carry no configuration, so the limits
//! in force are process-wide: [`install`] sets them at startup, [`current`] reads them.
//! The operator's own configuration file is trusted and not checked here.

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::sync::RwLock;

/// Limits on one YAML document read from a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YamlLimits {
    /// Size of the document text, in bytes.
    pub max_document_bytes: u64,
    /// Nesting depth of collections, counted after alias expansion.
    pub max_depth: u64,
    /// Number of aliases (`*name`) in the document.
    pub max_aliases: u64,
    /// Number of nodes (scalars, sequences, mappings, keys included) after alias
    /// expansion.
    pub max_nodes: u64,
    /// Bytes of scalar text after alias expansion.
    pub max_expanded_bytes: u64,
}

impl YamlLimits {
    /// Generous for every real pack: pack.yaml files are a few kilobytes with at most
    /// a handful of anchors; the largest component files (workflows) have a few
    /// thousand nodes.
    pub const DEFAULT: YamlLimits = YamlLimits {
        max_document_bytes: 1024 * 1024,
        max_depth: 64,
        max_aliases: 1_000,
        max_nodes: 100_000,
        max_expanded_bytes: 16 * 1024 * 1024,
    };
}

impl Default for YamlLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

static PROCESS_LIMITS: RwLock<YamlLimits> = RwLock::new(YamlLimits::DEFAULT);

/// Sets the limits every later [`check_current`] applies (called once at startup with
/// the configured values).
pub fn install(limits: YamlLimits) {
    *PROCESS_LIMITS.write().unwrap_or_else(|e| e.into_inner()) = limits;
}

/// The limits in force in this process.
pub fn current() -> YamlLimits {
    *PROCESS_LIMITS.read().unwrap_or_else(|e| e.into_inner())
}

/// [`check`] with the process's limits.
pub fn check_current(text: &str) -> Result<(), YamlLimitError> {
    check(text, &current())
}

/// A document that crosses a limit. `line` is 1-based: where the limit was crossed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlLimitError {
    #[error(
        "the YAML document is {size} bytes, more than the limit of {limit} bytes \
         (setting yaml.max_document_bytes)"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "line {line}: YAML nesting deeper than {limit} levels (aliases expanded) \
         (setting yaml.max_depth)"
    )]
    TooDeep { line: u64, limit: u64 },
    #[error("line {line}: more than {limit} YAML aliases (setting yaml.max_aliases)")]
    TooManyAliases { line: u64, limit: u64 },
    #[error(
        "line {line}: the YAML document expands to more than {limit} nodes once aliases \
         are resolved (setting yaml.max_nodes)"
    )]
    TooManyNodes { line: u64, limit: u64 },
    #[error(
        "line {line}: the YAML document expands to more than {limit} bytes of text once \
         aliases are resolved (setting yaml.max_expanded_bytes)"
    )]
    TooManyBytes { line: u64, limit: u64 },
    #[error("line {line}: alias *{anchor} refers to a node that contains it (recursive alias)")]
    RecursiveAlias { line: u64, anchor: String },
}

/// Checks `text` against `limits` without building any value. A syntax error ends the
/// check successfully: everything before it was within the limits, and serde then
/// reports the error in its own words.
pub fn check(text: &str, limits: &YamlLimits) -> Result<(), YamlLimitError> {
    let size = text.len() as u64;
    if size > limits.max_document_bytes {
        return Err(YamlLimitError::TooLarge {
            size,
            limit: limits.max_document_bytes,
        });
    }
    let mut parser = EventParser::new(text.as_bytes());
    let mut tally = Tally::new(limits);
    while let Some(event) = parser.next() {
        if tally.event(event)? {
            break;
        }
    }
    Ok(())
}

/// What the checker needs of one libyaml event.
#[derive(Debug)]
enum Event {
    DocumentStart,
    StreamEnd,
    Alias {
        anchor: Vec<u8>,
        line: u64,
    },
    Scalar {
        anchor: Option<Vec<u8>>,
        bytes: u64,
        line: u64,
    },
    CollectionStart {
        anchor: Option<Vec<u8>>,
        line: u64,
    },
    CollectionEnd,
    Other,
}

/// The expanded cost of a complete anchored node.
#[derive(Clone, Copy)]
struct Cost {
    nodes: u64,
    bytes: u64,
    /// Levels of collections the node adds where it is used (0 for a scalar).
    height: u64,
}

enum Anchored {
    /// The anchored collection is still open: an alias to it would be recursive.
    Open,
    Done(Cost),
}

struct Frame {
    anchor: Option<Vec<u8>>,
    nodes_at_start: u64,
    bytes_at_start: u64,
    /// Deepest level reached below this collection, relative to it.
    height: u64,
}

struct Tally<'l> {
    limits: &'l YamlLimits,
    nodes: u64,
    bytes: u64,
    aliases: u64,
    open: Vec<Frame>,
    anchors: HashMap<Vec<u8>, Anchored>,
}

impl<'l> Tally<'l> {
    fn new(limits: &'l YamlLimits) -> Self {
        Self {
            limits,
            nodes: 0,
            bytes: 0,
            aliases: 0,
            open: Vec::new(),
            anchors: HashMap::new(),
        }
    }

    /// Adds a node of `cost` at the current level. `line` names where it appears.
    fn add(&mut self, cost: Cost, line: u64) -> Result<(), YamlLimitError> {
        self.nodes = self.nodes.saturating_add(cost.nodes);
        if self.nodes > self.limits.max_nodes {
            return Err(YamlLimitError::TooManyNodes {
                line,
                limit: self.limits.max_nodes,
            });
        }
        self.bytes = self.bytes.saturating_add(cost.bytes);
        if self.bytes > self.limits.max_expanded_bytes {
            return Err(YamlLimitError::TooManyBytes {
                line,
                limit: self.limits.max_expanded_bytes,
            });
        }
        let depth = (self.open.len() as u64).saturating_add(cost.height);
        if depth > self.limits.max_depth {
            return Err(YamlLimitError::TooDeep {
                line,
                limit: self.limits.max_depth,
            });
        }
        // Every open collection now reaches at least this deep.
        for (level, frame) in self.open.iter_mut().enumerate().rev() {
            let below = depth - level as u64 - 1;
            if frame.height >= below {
                break;
            }
            frame.height = below;
        }
        Ok(())
    }

    /// Accounts one event; `Ok(true)` once the stream has ended.
    fn event(&mut self, event: Event) -> Result<bool, YamlLimitError> {
        match event {
            // Anchors are per document, as in serde.
            Event::DocumentStart => self.anchors.clear(),
            Event::StreamEnd => return Ok(true),
            Event::Other => {}
            Event::Scalar {
                anchor,
                bytes,
                line,
            } => {
                let cost = Cost {
                    nodes: 1,
                    bytes,
                    height: 0,
                };
                self.add(cost, line)?;
                if let Some(anchor) = anchor {
                    self.anchors.insert(anchor, Anchored::Done(cost));
                }
            }
            Event::Alias { anchor, line } => {
                self.aliases += 1;
                if self.aliases > self.limits.max_aliases {
                    return Err(YamlLimitError::TooManyAliases {
                        line,
                        limit: self.limits.max_aliases,
                    });
                }
                let cost = match self.anchors.get(&anchor) {
                    Some(Anchored::Done(cost)) => *cost,
                    Some(Anchored::Open) => {
                        return Err(YamlLimitError::RecursiveAlias {
                            line,
                            anchor: String::from_utf8_lossy(&anchor).into_owned(),
                        });
                    }
                    // serde refuses an unknown anchor; count it as the one node it
                    // would have been.
                    None => Cost {
                        nodes: 1,
                        bytes: 0,
                        height: 0,
                    },
                };
                self.add(cost, line)?;
            }
            Event::CollectionStart { anchor, line } => {
                self.add(
                    Cost {
                        nodes: 1,
                        bytes: 0,
                        height: 1,
                    },
                    line,
                )?;
                if let Some(anchor) = &anchor {
                    self.anchors.insert(anchor.clone(), Anchored::Open);
                }
                self.open.push(Frame {
                    anchor,
                    // The collection itself is already counted in `nodes`.
                    nodes_at_start: self.nodes - 1,
                    bytes_at_start: self.bytes,
                    height: 0,
                });
            }
            Event::CollectionEnd => {
                if let Some(frame) = self.open.pop()
                    && let Some(anchor) = frame.anchor
                {
                    let cost = Cost {
                        nodes: self.nodes - frame.nodes_at_start,
                        bytes: self.bytes - frame.bytes_at_start,
                        height: frame.height + 1,
                    };
                    self.anchors.insert(anchor, Anchored::Done(cost));
                }
            }
        }
        Ok(false)
    }
}

/// libyaml's event parser over a borrowed input; yields `None` at the end of the
/// stream and at the first syntax error.
struct EventParser<'input> {
    // Boxed: libyaml keeps a pointer to the parser inside itself (the read handler's
    // data), so it must not move once initialised.
    parser: Box<MaybeUninit<unsafe_libyaml_norway::yaml_parser_t>>,
    initialised: bool,
    failed: bool,
    _input: std::marker::PhantomData<&'input [u8]>,
}

impl<'input> EventParser<'input> {
    fn new(input: &'input [u8]) -> Self {
        let mut parser = Box::new(MaybeUninit::<unsafe_libyaml_norway::yaml_parser_t>::uninit());
        // SAFETY: `parser` is valid, writable memory for a yaml_parser_t that never
        // moves (it is boxed); `input` outlives `self` (lifetime 'input).
        let initialised = unsafe {
            let p = parser.as_mut_ptr();
            if unsafe_libyaml_norway::yaml_parser_initialize(p).fail {
                false
            } else {
                unsafe_libyaml_norway::yaml_parser_set_encoding(
                    p,
                    unsafe_libyaml_norway::YAML_UTF8_ENCODING,
                );
                unsafe_libyaml_norway::yaml_parser_set_input_string(
                    p,
                    input.as_ptr(),
                    input.len() as u64,
                );
                true
            }
        };
        Self {
            parser,
            initialised,
            failed: !initialised,
            _input: std::marker::PhantomData,
        }
    }

    fn next(&mut self) -> Option<Event> {
        if self.failed {
            return None;
        }
        let mut raw = MaybeUninit::<unsafe_libyaml_norway::yaml_event_t>::uninit();
        // SAFETY: the parser was initialised (`failed` is false otherwise); the event
        // is read only after yaml_parser_parse succeeded, which initialises it, and
        // deleted exactly once. Pointers in the event (anchor strings) are read before
        // the delete.
        unsafe {
            let p = self.parser.as_mut_ptr();
            if unsafe_libyaml_norway::yaml_parser_parse(p, raw.as_mut_ptr()).fail {
                self.failed = true;
                return None;
            }
            let event = raw.as_mut_ptr();
            let out = convert(&*event);
            unsafe_libyaml_norway::yaml_event_delete(event);
            Some(out)
        }
    }
}

impl Drop for EventParser<'_> {
    fn drop(&mut self) {
        if self.initialised {
            // SAFETY: initialised by yaml_parser_initialize and deleted only here.
            unsafe { unsafe_libyaml_norway::yaml_parser_delete(self.parser.as_mut_ptr()) }
        }
    }
}

/// # Safety
/// `event` must be an event produced by a successful `yaml_parser_parse`.
unsafe fn convert(event: &unsafe_libyaml_norway::yaml_event_t) -> Event {
    let line = event.start_mark.line + 1;
    // SAFETY (all reads below): the union field read matches `type_`, as documented
    // by libyaml; anchors are NUL-terminated strings owned by the event.
    unsafe {
        match event.type_ {
            unsafe_libyaml_norway::YAML_DOCUMENT_START_EVENT => Event::DocumentStart,
            unsafe_libyaml_norway::YAML_STREAM_END_EVENT => Event::StreamEnd,
            unsafe_libyaml_norway::YAML_ALIAS_EVENT => Event::Alias {
                anchor: anchor(event.data.alias.anchor).unwrap_or_default(),
                line,
            },
            unsafe_libyaml_norway::YAML_SCALAR_EVENT => Event::Scalar {
                anchor: anchor(event.data.scalar.anchor),
                bytes: event.data.scalar.length,
                line,
            },
            unsafe_libyaml_norway::YAML_SEQUENCE_START_EVENT => Event::CollectionStart {
                anchor: anchor(event.data.sequence_start.anchor),
                line,
            },
            unsafe_libyaml_norway::YAML_MAPPING_START_EVENT => Event::CollectionStart {
                anchor: anchor(event.data.mapping_start.anchor),
                line,
            },
            unsafe_libyaml_norway::YAML_SEQUENCE_END_EVENT
            | unsafe_libyaml_norway::YAML_MAPPING_END_EVENT => Event::CollectionEnd,
            _ => Event::Other,
        }
    }
}

/// # Safety
/// `ptr` is null or a NUL-terminated string.
unsafe fn anchor(ptr: *const u8) -> Option<Vec<u8>> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    Some(unsafe { CStr::from_ptr(ptr.cast()) }.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const FAST: Duration = Duration::from_secs(1);

    fn billion_laughs(levels: usize, fanout: usize) -> String {
        let mut s = String::from("a0: &a0 [lol]\n");
        for i in 1..levels {
            let refs = vec![format!("*a{}", i - 1); fanout].join(", ");
            s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        s
    }

    #[test]
    fn billion_laughs_is_refused_in_milliseconds() {
        // 10 levels of 10 aliases each: 10^9 nodes once expanded.
        let text = billion_laughs(10, 10);
        assert!(text.len() < 1024, "{}", text.len());
        let started = Instant::now();
        let err = check(&text, &YamlLimits::DEFAULT).unwrap_err();
        assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
        assert!(
            matches!(err, YamlLimitError::TooManyNodes { limit: 100_000, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("yaml.max_nodes"), "{err}");
        // serde would have expanded this; the check never builds anything.
        let line = match err {
            YamlLimitError::TooManyNodes { line, .. } => line,
            _ => unreachable!(),
        };
        assert!((5..=10).contains(&line), "{line}");
    }

    #[test]
    fn long_scalars_behind_few_aliases_are_refused_by_bytes() {
        let big = "x".repeat(100_000);
        let mut text = format!("big: &big \"{big}\"\nrefs:\n");
        for _ in 0..200 {
            text.push_str("  - *big\n");
        }
        let err = check(&text, &YamlLimits::DEFAULT).unwrap_err();
        assert!(
            matches!(err, YamlLimitError::TooManyBytes { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("yaml.max_expanded_bytes"));
    }

    #[test]
    fn alias_count_is_limited() {
        let mut text = String::from("x: &x 1\nl:\n");
        for _ in 0..1_001 {
            text.push_str("  - *x\n");
        }
        let err = check(&text, &YamlLimits::DEFAULT).unwrap_err();
        assert_eq!(
            err,
            YamlLimitError::TooManyAliases {
                line: 1_003,
                limit: 1_000
            }
        );
        assert!(err.to_string().contains("yaml.max_aliases"));
    }

    #[test]
    fn deep_flow_nesting_is_refused_in_milliseconds() {
        let depth = 100_000;
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let started = Instant::now();
        let err = check(&text, &YamlLimits::DEFAULT).unwrap_err();
        assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
        assert_eq!(err, YamlLimitError::TooDeep { line: 1, limit: 64 });
        assert!(err.to_string().contains("yaml.max_depth"));

        let text = format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth));
        let started = Instant::now();
        let err = check(&text, &YamlLimits::DEFAULT).unwrap_err();
        assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
        assert!(matches!(err, YamlLimitError::TooDeep { .. }), "{err:?}");
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let text = format!("{}x\n", "- ".repeat(100_000));
        let started = Instant::now();
        let err = check(&text, &YamlLimits::DEFAULT).unwrap_err();
        assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
        assert!(matches!(err, YamlLimitError::TooDeep { .. }), "{err:?}");
    }

    #[test]
    fn depth_counts_expanded_aliases() {
        let limits = YamlLimits {
            max_depth: 4,
            ..YamlLimits::DEFAULT
        };
        // Three levels deep on its own…
        let anchored = "a: &deep [[[1]]]\n";
        check(anchored, &limits).unwrap();
        // …and three more where it is used.
        let text = format!("{anchored}b: [[*deep]]\n");
        let err = check(&text, &limits).unwrap_err();
        assert_eq!(err, YamlLimitError::TooDeep { line: 2, limit: 4 });
    }

    #[test]
    fn recursive_alias_is_refused() {
        let err = check("a: &a [1, *a]\n", &YamlLimits::DEFAULT).unwrap_err();
        assert_eq!(
            err,
            YamlLimitError::RecursiveAlias {
                line: 1,
                anchor: "a".into()
            }
        );
    }

    #[test]
    fn size_is_checked_before_parsing() {
        let limits = YamlLimits {
            max_document_bytes: 10,
            ..YamlLimits::DEFAULT
        };
        let err = check("key: a value longer than ten bytes", &limits).unwrap_err();
        assert_eq!(
            err,
            YamlLimitError::TooLarge {
                size: 34,
                limit: 10
            }
        );
        assert!(err.to_string().contains("yaml.max_document_bytes"));
    }

    #[test]
    fn node_count_includes_keys_and_collections() {
        let limits = YamlLimits {
            max_nodes: 5,
            ..YamlLimits::DEFAULT
        };
        // mapping + (a, 1) + (b, 2) = 5 nodes.
        check("a: 1\nb: 2\n", &limits).unwrap();
        assert!(check("a: 1\nb: 2\nc: 3\n", &limits).is_err());
    }

    #[test]
    fn anchors_redefined_later_use_the_latest_definition() {
        let limits = YamlLimits {
            max_nodes: 12,
            ..YamlLimits::DEFAULT
        };
        // *x is one scalar after the redefinition, not the 4-node sequence.
        check("a: &x [1, 2, 3]\nb: &x 1\nc: [*x, *x]\n", &limits).unwrap();
    }

    #[test]
    fn syntax_errors_are_left_to_serde() {
        check("a: [1, 2\nb: :\n", &YamlLimits::DEFAULT).unwrap();
        check("", &YamlLimits::DEFAULT).unwrap();
        check("a: *unknown\n", &YamlLimits::DEFAULT).unwrap();
    }

    #[test]
    fn real_pack_yaml_and_components_pass() {
        let pack = r#"
ref: my_pack
label: My Pack
description: A pack with the usual things
version: 1.10.0
author: someone
email: someone@example.com
keywords: [monitoring, alerts]
dependencies:
  - core>=1.0
  - http: ^2.1
python_versions: ["3"]
runtime_deps: &deps
  python: ">=3.9"
defaults: &defaults
  timeout: 60
  retries: 3
testing:
  enabled: true
  runners:
    python:
      <<: *defaults
      entry_point: tests/run.py
"#;
        let parses = |text: &str| {
            serde_yaml::from_str::<serde_yaml::Value>(text).unwrap();
        };
        parses(pack);
        check(pack, &YamlLimits::DEFAULT).unwrap();
        let workflow = r#"
version: 1.0
description: A workflow with merge keys and anchors
input: [a, b, c]
vars:
  - common: &common {timeout: 30, retries: 2}
tasks:
  one:
    action: core.local
    input: {cmd: "echo 1", <<: *common}
    next:
      - when: <% succeeded() %>
        do: two
  two:
    action: core.local
    input: {cmd: "echo 2", <<: *common}
"#;
        parses(workflow);
        check(workflow, &YamlLimits::DEFAULT).unwrap();
        let mut actions = String::from("name: big\nparameters:\n");
        for i in 0..2_000 {
            actions.push_str(&format!(
                "  p{i}:\n    type: string\n    description: parameter {i}\n    default: x\n"
            ));
        }
        parses(&actions);
        check(&actions, &YamlLimits::DEFAULT).unwrap();
    }
}

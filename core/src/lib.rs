//! What the attune-packs server and its client both need, and nothing of the server:
//! the pack formats and the checks on them.
//!
//! - [`manifest`] (pack.yaml), [`components`] (actions, sensors, rules, …), [`checksum`]
//!   (the pack-file checksum), [`archive`] (bounded extraction), [`registry`] (the index
//!   format and version selection), [`source`] (the grammar of a pack source);
//! - [`packfs`] and [`paths`]: reading pack files through directory descriptors, confined
//!   to their roots, under caps; [`yaml_limits`]: caps on YAML documents;
//! - [`progress`] and [`failure`]: the stage vocabulary and how failures are classified;
//!   [`secrets`]: values scrubbed from every text that leaves the process.
//!
//! Cargo keeps it honest: this crate depends on no database, git, HTTP or TLS crate.

pub mod archive;
pub mod checksum;
pub mod components;
pub mod failure;
pub mod manifest;
pub mod packfs;
pub mod paths;
pub mod progress;
pub mod registry;
pub mod secrets;
pub mod source;
pub mod yaml_limits;

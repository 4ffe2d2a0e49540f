//! attune-packs server: downloads, analyses, builds and registers Attune packs.
//!
//! Layout (see docs/ARCHITECTURE.md for the invariants):
//! - stages, plain async Rust reporting through [`progress::Reporter`]: [`deps`],
//!   [`download`], [`buildenvs`], [`register`];
//! - shared model: [`manifest`] (pack.yaml), [`dependency`] (what a dependency means,
//!   cycles, the solver), [`store`] (database), [`paths`] (confinement), [`runtimes`]
//!   (host interpreters);
//! - doors: [`grpc`] and [`rest`] (the only modules that know protobuf and the API's JSON);
//! - process: [`config`], [`auth`], [`state`] (builds every stage once, with the
//!   [`locks`] they share), [`server`], [`telemetry`]; the binary (`main.rs`) parses flags.

pub mod auth;
pub mod banner;
pub mod base_dir;
pub use attune_packs_core::{
    archive, checksum, components, failure, manifest, packfs, paths, progress, source, yaml_limits,
};
pub mod buildenvs;
pub mod config;
pub mod dependency;
pub mod deps;
pub mod download;
pub mod envs;
pub mod events;
pub mod fault;
pub mod fetch;
pub mod git;
pub mod grants;
pub mod grpc;
pub mod install;
pub mod inventory;
pub mod journal;
pub mod lifecycle;
pub mod locks;
pub mod packtest;
pub mod process;
pub mod provenance;
pub mod register;
pub mod registry;
pub mod rest;
pub mod runtimes;
pub mod sandbox;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod users;

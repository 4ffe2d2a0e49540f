//! attune-packs server: downloads, analyses, builds and registers Attune packs.
//!
//! Layout (see docs/ARCHITECTURE.md for the invariants):
//! - stages, plain async Rust reporting through [`progress::Reporter`]: [`deps`],
//!   [`download`], [`buildenvs`], [`register`];
//! - shared model: [`manifest`] (pack.yaml), [`dependency`] (what a dependency means,
//!   cycles, the solver), [`store`] (database), [`paths`] (confinement), [`runtimes`]
//!   (host interpreters);
//! - doors: [`grpc`] and [`rest`] (the only modules that know protobuf and the API's JSON);
//! - process: [`config`], [`auth`], [`state`], [`server`], [`telemetry`]; the binary (`main.rs`) parses flags.

pub mod archive;
pub mod auth;
pub mod buildenvs;
pub mod checksum;
pub mod components;
pub mod config;
pub mod dependency;
pub mod deps;
pub mod download;
pub mod envs;
pub mod failure;
pub mod fault;
pub mod fetch;
pub mod git;
pub mod grpc;
pub mod install;
pub mod journal;
pub mod manifest;
pub mod packfs;
pub mod packtest;
pub mod paths;
pub mod process;
pub mod progress;
pub mod provenance;
pub mod register;
pub mod registry;
pub mod rest;
pub mod runtimes;
pub mod sandbox;
pub mod server;
pub mod shutdown;
pub mod source;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod users;
pub mod yaml_limits;

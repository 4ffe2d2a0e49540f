//! The one integration-test binary (one link step): a real server on a loopback port,
//! driven by the generated client, grpcurl and the shipped binaries.

#[macro_use]
extern crate attune_packs_test_harness;

mod common;
mod support;

mod auth;
mod binaries;
mod build_envs;
mod build_envs_host;
mod confinement;
mod crash;
mod crash_loop;
mod dependencies;
mod download;
mod events;
mod exchange_registry;
mod git;
mod grants;
mod grpcurl;
mod hostile_archive;
mod hostile_doors;
mod hostile_files;
mod hostile_limits;
mod hostile_yaml;
mod install;
mod lifecycle_read;
mod register;
mod register_throughput;
mod remove;
mod rest;
mod rollback;
mod stackstorm_packs;
mod symlinks;

fn main() -> std::process::ExitCode {
    attune_packs_test_harness::main()
}

//! The one integration-test binary (one link step): a real server on a loopback port,
//! driven by the generated client, grpcurl and the shipped binaries.

mod common;
mod support;

mod auth;
mod binaries;
mod build_envs;
mod dependencies;
mod download;
mod git;
mod grpcurl;
mod install;
mod register;
mod register_throughput;
mod rest;

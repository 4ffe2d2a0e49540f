//! The BuildEnvs stage: Python virtualenvs and Node modules for packs ([`crate::envs`]
//! does the building), several packs at a time.
//!
//! Environments live outside the packs, under `<packs_base_dir>/.envs/<ref>/`, so they
//! keep working when RegisterBatch stores a pack under the base directory.

use crate::base_dir::{self, BaseDirError};
use crate::failure::{Failure, FailureKind};
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use futures::StreamExt;

use crate::{
    config::BuildSection,
    envs::{self, BuildOptions, EnvSettings, NodeEnv, PythonEnv},
    locks::PackLocks,
    manifest::{Manifest, dir_name},
    paths::PathPolicy,
    progress::{Level, Reporter, Stage},
};

#[derive(Debug, Clone)]
pub struct BuildEnvsRequest {
    pub pack_paths: Vec<String>,
    pub packs_base_dir: Option<String>,
    pub python_version: Option<String>,
    pub nodejs_version: Option<String>,
    pub skip_python: bool,
    pub skip_nodejs: bool,
    pub force_rebuild: bool,
    pub timeout: Duration,
    pub detect_only: bool,
    /// See [`BuildOptions::keep_previous`].
    pub keep_previous: bool,
}

#[derive(Debug, Clone)]
pub struct BuiltEnvironment {
    pub pack_ref: String,
    pub pack_path: String,
    pub python: Option<PythonEnv>,
    pub nodejs: Option<NodeEnv>,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct FailedEnvironment {
    pub pack_ref: String,
    pub pack_path: String,
    /// `python`, `nodejs`, or `unknown` (the pack could not be read).
    pub runtime: String,
    pub error: String,
}

#[derive(Debug, Clone, Default)]
pub struct BuildEnvsReport {
    /// Packs whose environments are all ready (built, reused, or none needed).
    pub built: Vec<BuiltEnvironment>,
    pub failed: Vec<FailedEnvironment>,
    pub total_packs: u32,
    /// Packs with at least one failure.
    pub failed_packs: u32,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildEnvsError {
    #[error(transparent)]
    PacksBaseDir(#[from] BaseDirError),
}

impl Failure for BuildEnvsError {
    fn kind(&self) -> FailureKind {
        match self {
            BuildEnvsError::PacksBaseDir(_) => FailureKind::InvalidRequest,
        }
    }
}

pub struct EnvBuilder {
    paths: PathPolicy,
    /// pip and npm settings of `build:`, with the path policy's read limits.
    settings: EnvSettings,
    default_base_dir: PathBuf,
    /// `build.concurrency`: packs whose environments are built at the same time.
    concurrency: usize,
    /// One build of a pack's environments at a time, across requests and processes.
    locks: PackLocks,
}

/// The environment root for packs stored under `base`.
pub fn envs_root(base: &Path) -> PathBuf {
    base.join(".envs")
}

impl EnvBuilder {
    /// Environments go under `<default_base_dir>/.envs` when a request names no
    /// `packs_base_dir`.
    pub fn new(
        settings: &BuildSection,
        default_base_dir: PathBuf,
        paths: PathPolicy,
        locks: PackLocks,
    ) -> Self {
        Self {
            settings: EnvSettings {
                read_limits: *paths.read_limits(),
                host: std::sync::Arc::new(settings.capture_host_config()),
                ..settings.env_settings()
            },
            concurrency: settings.concurrency,
            default_base_dir,
            paths,
            locks,
        }
    }

    pub async fn build(
        &self,
        request: BuildEnvsRequest,
        reporter: &Reporter,
    ) -> Result<BuildEnvsReport, BuildEnvsError> {
        let started = Instant::now();
        let base = base_dir::resolve(
            &self.paths,
            request.packs_base_dir.as_deref(),
            &self.default_base_dir,
        )?;
        let options = BuildOptions {
            envs_root: envs_root(&base),
            python_version: request.python_version.clone(),
            nodejs_version: request.nodejs_version.clone(),
            skip_python: request.skip_python,
            skip_nodejs: request.skip_nodejs,
            force_rebuild: request.force_rebuild,
            timeout: request.timeout,
            detect_only: request.detect_only,
            keep_previous: request.keep_previous,
        };
        let total = request.pack_paths.len() as u64;
        let done = std::sync::atomic::AtomicU64::new(0);
        let outcomes: Vec<(Option<BuiltEnvironment>, Vec<FailedEnvironment>)> =
            futures::stream::iter(request.pack_paths.clone())
                .map(|given| {
                    let options = &options;
                    let done = &done;
                    async move {
                        let outcome = self.build_one(&given, options, reporter).await;
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        let progress = reporter.with_subject(&given);
                        if outcome.1.is_empty() {
                            progress.count(Stage::Build, "environments ready", n, Some(total));
                        } else {
                            progress.emit(
                                Stage::Build,
                                Level::Error,
                                "environment build failed",
                                Some(n),
                                Some(total),
                            );
                        }
                        outcome
                    }
                })
                .buffered(self.concurrency.max(1))
                .collect()
                .await;
        let mut report = BuildEnvsReport {
            total_packs: total as u32,
            ..Default::default()
        };
        for (built, failed) in outcomes {
            if failed.is_empty() {
                report.built.extend(built);
            } else {
                report.failed_packs += 1;
                report.failed.extend(failed);
            }
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    async fn build_one(
        &self,
        given: &str,
        options: &BuildOptions,
        reporter: &Reporter,
    ) -> (Option<BuiltEnvironment>, Vec<FailedEnvironment>) {
        // The pack cannot be read: reported under no ref and no runtime.
        let unknown = |error: &dyn std::fmt::Display| {
            (
                None,
                vec![FailedEnvironment {
                    pack_ref: "unknown".into(),
                    pack_path: given.to_string(),
                    runtime: "unknown".into(),
                    error: error.to_string(),
                }],
            )
        };
        let dir = match self.paths.confine(given) {
            Ok(dir) if dir.is_dir() => dir,
            Ok(_) => return unknown(&format_args!("pack directory '{given}' does not exist")),
            Err(e) => return unknown(&e),
        };
        let manifest = match self.paths.open_confined(&dir) {
            Ok(opened) => {
                match Manifest::read(&opened, dir_name::of_path(&dir), self.paths.read_limits()) {
                    Ok(manifest) => manifest,
                    Err(e) => return unknown(&e),
                }
            }
            Err(e) => return unknown(&e),
        };
        let progress = reporter.with_subject(&manifest.pack_ref);
        let envs = envs::build_pack_envs(
            &dir,
            &manifest,
            &self.settings,
            options,
            &self.locks,
            &progress,
        )
        .await;
        let failures: Vec<FailedEnvironment> = envs
            .failures
            .iter()
            .map(|f| FailedEnvironment {
                pack_ref: manifest.pack_ref.clone(),
                pack_path: given.to_string(),
                runtime: f.runtime.to_string(),
                error: f.error.to_string(),
            })
            .collect();
        let built = BuiltEnvironment {
            pack_ref: manifest.pack_ref.clone(),
            pack_path: given.to_string(),
            python: envs.python,
            nodejs: envs.nodejs,
            duration: envs.duration,
        };
        (Some(built), failures)
    }
}

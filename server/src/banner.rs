//! What `serve` says once, when it is listening: where to reach it, where its state
//! is, what requests may touch, and how to start calling it. Nothing secret: the
//! database URL without its password, registry URLs redacted, the secret only named.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    auth::SecretSource,
    config::{Config, IndexEntryConfig},
    store::shell_word,
};

/// The banner's lines, first the address.
pub fn lines(config: &Config, listening: SocketAddr, secret: &SecretSource) -> Vec<String> {
    let base = format!("http://{}", reachable(listening));
    let roots = config
        .allowed_roots()
        .iter()
        .map(|root| root.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        format!(
            "attune-packs-server {} listening on {listening}",
            env!("CARGO_PKG_VERSION")
        ),
        format!(
            "gRPC and REST/JSON share this port: gRPC at {base} \
             (attune-packs --server {base}), REST at {base}/api/v1"
        ),
        format!("data dir: {}", config.data_dir_absolute().display()),
        format!("database: {}", config.database_url_shown()),
        format!(
            "allowed roots (request paths are read on this server and must lie inside one; \
             setting allowed_roots): {roots}"
        ),
        registries(&config.registry.indices),
        format!(
            "tokens are signed with the secret from {secret}; mint one with {}",
            token_command(config, secret)
        ),
    ]
}

/// Logs [`lines`] at info, one event per line.
pub fn log(config: &Config, listening: SocketAddr, secret: &SecretSource) {
    for line in lines(config, listening, secret) {
        tracing::info!("{line}");
    }
}

/// An address a client on this machine can use: a wildcard listener is reached
/// through loopback.
fn reachable(listening: SocketAddr) -> SocketAddr {
    let ip = match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listening.port())
}

fn registries(indices: &[IndexEntryConfig]) -> String {
    if indices.is_empty() {
        return "registries: none configured, so pack refs such as `slack` cannot be \
                resolved; add one with registry.indices (e.g. \
                ATTUNE_PACKS_REGISTRY__INDICES='[{url: https://example.org/index.json}]') \
                or pass registry_url in a request"
            .into();
    }
    let listed = indices
        .iter()
        .map(|index| {
            let url = crate::source::redact_url(&index.url);
            let named = match &index.name {
                Some(name) => format!("{name} {url}"),
                None => url,
            };
            let disabled = if index.enabled { "" } else { ", disabled" };
            format!("{named} (priority {}{disabled})", index.priority)
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!("registries: {listed}")
}

/// The `token issue` command that finds this server's secret, in backquotes.
fn token_command(config: &Config, secret: &SecretSource) -> String {
    let issue = "attune-packs-server token issue --subject me";
    match secret {
        SecretSource::Env(var) => format!("`{issue}` ({var} set as for this server)"),
        SecretSource::ConfigFile(path) => format!(
            "`{issue} --config {}`",
            shell_word(&path.display().to_string())
        ),
        SecretSource::Setting => format!("`{issue}`"),
        // The default data dir is relative: the command finds it from the directory
        // the server was started in.
        SecretSource::DataDir(_) if config.data_dir == Config::default().data_dir => {
            format!("`{issue}` (in this directory)")
        }
        SecretSource::DataDir(_) => format!(
            "`{issue} --data-dir {}`",
            shell_word(&config.data_dir_absolute().display().to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_shown_as_loopback() {
        assert_eq!(
            reachable("0.0.0.0:50051".parse().unwrap()).to_string(),
            "127.0.0.1:50051"
        );
        assert_eq!(reachable("[::]:7".parse().unwrap()).to_string(), "[::1]:7");
        assert_eq!(
            reachable("10.1.2.3:7".parse().unwrap()).to_string(),
            "10.1.2.3:7"
        );
    }

    #[test]
    fn registry_urls_lose_their_credentials() {
        let index: IndexEntryConfig = serde_yaml::from_str(
            "{url: 'https://user:hunter2@r.example/index.json?key=hunter2', name: main}",
        )
        .unwrap();
        let line = registries(&[index]);
        assert!(line.contains("main https://r.example/index.json"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
    }
}

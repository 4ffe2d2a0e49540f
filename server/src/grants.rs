//! Who may do what: the grants a token or a login user carries, and the one table of
//! the grant each `PackService` RPC needs.
//!
//! Attune's permission model: resource `packs`, actions `read`, `install`, `delete`
//! and `configure`. Both doors reach the service implementation, which checks every
//! call against [`RPC_GRANTS`] before doing anything (`grpc::PackServiceImpl::allow`);
//! an RPC missing from the table is refused, never allowed by default.

use std::{collections::BTreeSet, fmt, str::FromStr};

use crate::{
    auth::Principal,
    failure::{Failure, FailureKind},
};

/// One permission: `packs:<action>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grant {
    /// See what is installed and what the registries offer; follow events.
    PacksRead,
    /// Put packs in: download, build environments, register, install.
    PacksInstall,
    /// Take packs out or replace them with an older version: remove, roll back.
    PacksDelete,
    /// Change registry settings. No RPC changes them yet; reserved so that tokens
    /// minted today keep their meaning when one does.
    PacksConfigure,
}

impl Grant {
    pub const ALL: [Grant; 4] = [
        Grant::PacksRead,
        Grant::PacksInstall,
        Grant::PacksDelete,
        Grant::PacksConfigure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Grant::PacksRead => "packs:read",
            Grant::PacksInstall => "packs:install",
            Grant::PacksDelete => "packs:delete",
            Grant::PacksConfigure => "packs:configure",
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error(
        "unknown grant `{}`: the grants are packs:read, packs:install, packs:delete and packs:configure",
        .given.escape_debug()
    )]
    Unknown { given: String },
}

impl FromStr for Grant {
    type Err = GrantError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Grant::ALL
            .into_iter()
            .find(|g| g.as_str() == text)
            .ok_or_else(|| GrantError::Unknown {
                given: text.chars().take(64).collect(),
            })
    }
}

/// The grants of one token or user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantSet(BTreeSet<Grant>);

impl GrantSet {
    pub fn all() -> Self {
        Self(Grant::ALL.into_iter().collect())
    }

    pub fn none() -> Self {
        Self::default()
    }

    pub fn contains(&self, grant: Grant) -> bool {
        self.0.contains(&grant)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Grant> + '_ {
        self.0.iter().copied()
    }

    /// Parses grant names; duplicates collapse, an unknown name is an error.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, GrantError> {
        names
            .iter()
            .map(|n| n.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The names, in a stable order: what a token claim or a `users.grants` row holds.
    pub fn names(&self) -> Vec<String> {
        self.iter().map(|g| g.as_str().to_string()).collect()
    }
}

impl FromIterator<Grant> for GrantSet {
    fn from_iter<I: IntoIterator<Item = Grant>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for GrantSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no grants");
        }
        f.write_str(&self.names().join(", "))
    }
}

/// The grant each `attune.packs.v1.PackService` RPC needs: the only place that says
/// so. A test checks that every method of the service descriptor has an entry.
///
/// RollbackPack needs `packs:delete`, not `packs:install`: it throws the installed
/// version away in favour of a kept one, which is as destructive as removing it.
pub const RPC_GRANTS: &[(&str, Grant)] = &[
    ("ListPacks", Grant::PacksRead),
    ("GetPack", Grant::PacksRead),
    ("VerifyPacks", Grant::PacksRead),
    ("PackHistory", Grant::PacksRead),
    ("WatchEvents", Grant::PacksRead),
    ("ListRegistries", Grant::PacksRead),
    ("SearchPacks", Grant::PacksRead),
    ("Dependencies", Grant::PacksRead),
    ("Download", Grant::PacksInstall),
    ("BuildEnvs", Grant::PacksInstall),
    ("RegisterBatch", Grant::PacksInstall),
    ("Install", Grant::PacksInstall),
    ("RemovePacks", Grant::PacksDelete),
    ("RollbackPack", Grant::PacksDelete),
];

/// The grant `rpc` (a method name such as `RemovePacks`) needs; `None` when the table
/// does not know it, which refuses the call.
pub fn required_grant(rpc: &str) -> Option<Grant> {
    RPC_GRANTS
        .iter()
        .find(|(name, _)| *name == rpc)
        .map(|(_, grant)| *grant)
}

/// The setting that keeps tokens without a `grants` claim working.
pub const LEGACY_SETTING: &str = "auth.legacy_tokens_full_access";

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "this call ({rpc}) needs the grant `{needed}`; the token has {held} (mint one with \
         `attune-packs-server token issue --grant {needed}`; a login user gets it with \
         `attune-packs-server user grants --email <email> --grant {needed} …` and a new login)"
    )]
    MissingGrant {
        rpc: String,
        needed: Grant,
        held: GrantSet,
    },
    #[error(
        "this call ({rpc}) needs the grant `{needed}`, and the token carries no `grants` claim \
         (it was issued before grants existed) while `{LEGACY_SETTING}` is false: use a token \
         minted with `attune-packs-server token issue --grant {needed}`"
    )]
    LegacyToken { rpc: String, needed: Grant },
    #[error("{rpc} has no entry in the table of grants, so nobody may call it")]
    Unmapped { rpc: String },
    #[error("the call carries no authenticated caller")]
    NoPrincipal,
}

impl Failure for AccessError {
    fn kind(&self) -> FailureKind {
        match self {
            AccessError::NoPrincipal => FailureKind::Unauthenticated,
            _ => FailureKind::PermissionDenied,
        }
    }
}

/// May `principal` call `rpc`? A token without a `grants` claim may do everything
/// while `legacy_full_access` (`auth.legacy_tokens_full_access`) is true.
pub fn authorize(
    principal: Option<&Principal>,
    rpc: &str,
    legacy_full_access: bool,
) -> Result<(), AccessError> {
    let principal = principal.ok_or(AccessError::NoPrincipal)?;
    let needed = required_grant(rpc).ok_or_else(|| AccessError::Unmapped {
        rpc: rpc.to_string(),
    })?;
    match &principal.grants {
        Some(held) if held.contains(needed) => Ok(()),
        Some(held) => Err(AccessError::MissingGrant {
            rpc: rpc.to_string(),
            needed,
            held: held.clone(),
        }),
        None if legacy_full_access => Ok(()),
        None => Err(AccessError::LegacyToken {
            rpc: rpc.to_string(),
            needed,
        }),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn principal(grants: Option<GrantSet>) -> Principal {
        Principal {
            subject: "t".into(),
            grants,
        }
    }

    /// Every method of the service as the descriptor set describes it.
    fn service_methods() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(attune_packs_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let service = set
            .file
            .iter()
            .filter(|f| f.package() == "attune.packs.v1")
            .flat_map(|f| &f.service)
            .find(|s| s.name() == "PackService")
            .expect("PackService is described");
        service
            .method
            .iter()
            .map(|m| m.name().to_string())
            .collect()
    }

    #[test]
    fn every_rpc_of_the_service_has_exactly_one_entry_and_no_entry_is_stale() {
        let methods = service_methods();
        assert!(methods.len() >= 14, "{methods:?}");
        for method in &methods {
            let entries = RPC_GRANTS.iter().filter(|(n, _)| n == method).count();
            assert_eq!(
                entries, 1,
                "{method} needs exactly one entry in grants::RPC_GRANTS (has {entries})"
            );
        }
        for (name, _) in RPC_GRANTS {
            assert!(
                methods.iter().any(|m| m == name),
                "RPC_GRANTS names {name}, which the service does not have"
            );
        }
    }

    #[test]
    fn destructive_calls_need_delete_and_reading_calls_only_read() {
        for rpc in ["RemovePacks", "RollbackPack"] {
            assert_eq!(required_grant(rpc), Some(Grant::PacksDelete), "{rpc}");
        }
        for rpc in ["Download", "BuildEnvs", "RegisterBatch", "Install"] {
            assert_eq!(required_grant(rpc), Some(Grant::PacksInstall), "{rpc}");
        }
        assert_eq!(required_grant("WatchEvents"), Some(Grant::PacksRead));
        assert_eq!(required_grant("Unheard"), None);
    }

    #[test]
    fn grants_parse_strictly_and_print_in_a_stable_order() {
        let set = GrantSet::parse(&["packs:delete", "packs:read", "packs:read"]).unwrap();
        assert_eq!(set.names(), ["packs:read", "packs:delete"]);
        assert_eq!(set.to_string(), "packs:read, packs:delete");
        assert_eq!(GrantSet::none().to_string(), "no grants");
        for bad in ["packs:write", "PACKS:READ", "packs", "", "packs:read "] {
            let err = GrantSet::parse(&[bad]).unwrap_err();
            assert!(
                err.to_string().contains("packs:read, packs:install"),
                "{err}"
            );
        }
        let err = "x\ny".parse::<Grant>().unwrap_err();
        assert!(err.to_string().contains("x\\ny"), "{err}");
    }

    #[test]
    fn a_missing_grant_is_named_with_how_to_get_it() {
        let read_only = principal(Some(GrantSet::parse(&["packs:read"]).unwrap()));
        assert_eq!(authorize(Some(&read_only), "ListPacks", false), Ok(()));
        let err = authorize(Some(&read_only), "RemovePacks", true).unwrap_err();
        assert_eq!(err.kind(), FailureKind::PermissionDenied);
        let message = err.to_string();
        assert!(
            message.contains("needs the grant `packs:delete`"),
            "{message}"
        );
        assert!(message.contains("the token has packs:read"), "{message}");
        assert!(
            message.contains("token issue --grant packs:delete"),
            "{message}"
        );
        let err = authorize(Some(&read_only), "Unheard", true).unwrap_err();
        assert!(matches!(err, AccessError::Unmapped { .. }));
        assert_eq!(
            authorize(None, "ListPacks", true).unwrap_err().kind(),
            FailureKind::Unauthenticated
        );
    }

    #[test]
    fn a_token_without_the_claim_has_full_access_only_while_the_setting_says_so() {
        let legacy = principal(None);
        for (rpc, _) in RPC_GRANTS {
            assert_eq!(authorize(Some(&legacy), rpc, true), Ok(()));
            let err = authorize(Some(&legacy), rpc, false).unwrap_err();
            assert!(err.to_string().contains(LEGACY_SETTING), "{err}");
        }
        // Even an empty claim is a claim: nothing is allowed.
        let none = principal(Some(GrantSet::none()));
        for (rpc, _) in RPC_GRANTS {
            assert!(authorize(Some(&none), rpc, true).is_err(), "{rpc}");
        }
    }
}

//! Component names and refs.

use super::MAX_NAME_LEN;

/// Whether `s` is an acceptable name part of a component ref: ASCII letters, digits,
/// `_`, `-` and `.`, not starting or ending with a dot, 1 to [`MAX_NAME_LEN`] characters.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Whether `s` can be the pack part of a reference (lenient: the pack itself is checked
/// by the caller's `pack_exists`).
fn is_valid_pack_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// Whether Attune's database would store `pack.name` (lowercase, exactly one dot).
pub(super) fn attune_compatible(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// Attune's default label: the name after the last dot, `_`/`-` separated words
/// title-cased (`http_request` → `Http Request`).
pub fn generate_label(name: &str) -> String {
    let last = name.rsplit('.').next().unwrap_or(name);
    last.split(['_', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Qualifies a reference written in a component: a bare name means `pack`; otherwise
/// the first dot separates the pack from the name.
pub(super) fn qualify_reference(pack: &str, raw: &str) -> Result<String, ReferenceProblem> {
    let r = raw.trim();
    if r.is_empty() {
        return Err(ReferenceProblem::Empty);
    }
    match r.split_once('.') {
        None if is_valid_name(r) => Ok(format!("{pack}.{r}")),
        Some((p, n)) if is_valid_pack_part(p) && is_valid_name(n) => Ok(r.to_string()),
        _ => Err(ReferenceProblem::Invalid(raw.to_string())),
    }
}

/// Why a reference written in a component is unusable; the display completes
/// "<key>: <kind> reference …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ReferenceProblem {
    #[error("is empty")]
    Empty,
    #[error(
        "'{0}' is not a valid reference (expected '<pack>.<name>' or a bare name of this pack)"
    )]
    Invalid(String),
}

/// Whether a reference is a template (Jinja/YAQL) that cannot be resolved statically.
pub(super) fn is_template(raw: &str) -> bool {
    raw.contains("{{") || raw.contains("{%") || raw.contains("<%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("echo"));
        assert!(is_valid_name("st2.IntervalTimer"));
        assert!(is_valid_name("send-mail_2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(".x"));
        assert!(!is_valid_name("x."));
        assert!(!is_valid_name("a..b"));
        assert!(!is_valid_name("has space"));
        assert!(!is_valid_name("a/b"));
        assert!(attune_compatible("send_mail-2"));
        assert!(!attune_compatible("Send"));
        assert!(!attune_compatible("a.b"));
    }

    #[test]
    fn labels() {
        assert_eq!(generate_label("http_request"), "Http Request");
        assert_eq!(generate_label("core.echo"), "Echo");
        assert_eq!(generate_label("send-mail"), "Send Mail");
    }

    #[test]
    fn qualification() {
        assert_eq!(qualify_reference("p", "echo").unwrap(), "p.echo");
        assert_eq!(
            qualify_reference("p", "core.st2.IntervalTimer").unwrap(),
            "core.st2.IntervalTimer"
        );
        assert!(qualify_reference("p", "").is_err());
        assert!(qualify_reference("p", ".x").is_err());
        assert!(qualify_reference("p", "a b").is_err());
        assert!(qualify_reference("p", "core.").is_err());
    }
}

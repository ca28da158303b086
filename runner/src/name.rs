//! The one rule for user-given names (repository, stage, layer): each becomes
//! a single path component in the store, so it must be a harmless one.

/// The rule, worded for error messages.
pub const NAME_RULE: &str = "1 to 128 letters, digits and `._+-`, not starting with a dot";

/// Whether `name` follows [`NAME_RULE`]: a single, harmless path component.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

//! Groups: which groups a verified identity's socket belongs to.
//!
//! Owns the one rule both the handshake and an in-band token refresh apply:
//! the user's group from `auth.user_group_template` comes first (the
//! socket's lane follows it), then the extra groups the token grants, each
//! of which an `auth.allowed_groups` pattern must admit; a token asking for
//! any other group is refused whole. Also says what a refresh changes
//! between two such lists. It does no I/O and must not join or leave
//! anything itself: the handshake and the socket act on what it answers.

use std::sync::Arc;

use crate::auth::glob::glob_match;
use crate::auth::verify::Identity;
use crate::config::AuthConfig;

/// Extra group names at least this long are refused: the glob matcher's
/// cost grows with the name, and no real group is that long.
const MAX_EXTRA_GROUP_LEN: usize = 100;

/// Why an identity gets no groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("the user id cannot name a channels group")]
    InvalidUserId,
    #[error("the token asks for a group no pattern allows")]
    NotAllowed,
}

/// `auth.user_group_template` and `auth.allowed_groups`.
#[derive(Debug, Clone)]
pub struct GroupPolicy {
    user_group_template: String,
    allowed: Vec<String>,
}

impl GroupPolicy {
    pub fn new(config: &AuthConfig) -> GroupPolicy {
        GroupPolicy {
            user_group_template: config.user_group_template.clone(),
            allowed: config.allowed_groups.clone(),
        }
    }

    /// The groups of a socket that speaks for `identity`: its user's group
    /// first, then each extra group the token grants, once.
    pub fn groups_for(&self, identity: &Identity) -> Result<Vec<Arc<str>>, GroupError> {
        let group = self
            .user_group_template
            .replace("{user_id}", &identity.user_id);
        if !shared_proto::names::is_valid_group_name(&group) {
            return Err(GroupError::InvalidUserId);
        }
        // Extra groups only as granted by the token and allowed by a pattern.
        let mut groups: Vec<Arc<str>> = vec![Arc::from(group.as_str())];
        for extra in &identity.groups {
            let allowed = extra.len() < MAX_EXTRA_GROUP_LEN
                && shared_proto::names::is_valid_group_name(extra)
                && self
                    .allowed
                    .iter()
                    .any(|pattern| glob_match(pattern.as_bytes(), extra.as_bytes()));
            if !allowed {
                return Err(GroupError::NotAllowed);
            }
            if !groups.iter().any(|known| known.as_ref() == extra) {
                groups.push(Arc::from(extra.as_str()));
            }
        }
        Ok(groups)
    }
}

/// What moving a socket from one group list to another takes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupChange {
    /// In `wanted`, not in `current`, in `wanted`'s order.
    pub joined: Vec<Arc<str>>,
    /// In `current`, not in `wanted`, in `current`'s order.
    pub left: Vec<Arc<str>>,
}

impl GroupChange {
    /// The difference between two lists of a socket's groups.
    pub fn between(current: &[Arc<str>], wanted: &[Arc<str>]) -> GroupChange {
        let missing_from = |list: &[Arc<str>], group: &Arc<str>| !list.contains(group);
        GroupChange {
            joined: wanted
                .iter()
                .filter(|group| missing_from(current, group))
                .cloned()
                .collect(),
            left: current
                .iter()
                .filter(|group| missing_from(wanted, group))
                .cloned()
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> GroupPolicy {
        let config = AuthConfig {
            allowed_groups: allowed.iter().map(|pattern| pattern.to_string()).collect(),
            ..AuthConfig::default()
        };
        GroupPolicy::new(&config)
    }

    fn identity(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user_id: user.into(),
            expires_at: 0,
            groups: groups.iter().map(|group| group.to_string()).collect(),
        }
    }

    fn names(groups: &[Arc<str>]) -> Vec<&str> {
        groups.iter().map(AsRef::as_ref).collect()
    }

    #[test]
    fn the_users_group_comes_first_then_each_allowed_extra_once() {
        let policy = policy(&["todo_list_*"]);
        let groups = policy
            .groups_for(&identity(
                "7",
                &["todo_list_2", "todo_list_1", "todo_list_2"],
            ))
            .expect("allowed");
        assert_eq!(names(&groups), ["user_7", "todo_list_2", "todo_list_1"]);
        assert_eq!(
            names(&policy.groups_for(&identity("7", &[])).expect("no extras")),
            ["user_7"]
        );
    }

    #[test]
    fn any_group_no_pattern_allows_refuses_the_whole_token() {
        let policy = policy(&["todo_list_*"]);
        for extras in [
            &["admin"][..],
            &["todo_list_1", "user_8"],
            &["todo_list_:x"],
            &[""],
        ] {
            assert_eq!(
                policy.groups_for(&identity("7", extras)),
                Err(GroupError::NotAllowed),
                "{extras:?}"
            );
        }
        let long = format!("todo_list_{}", "x".repeat(MAX_EXTRA_GROUP_LEN));
        assert_eq!(
            policy.groups_for(&identity("7", &[long.as_str()])),
            Err(GroupError::NotAllowed)
        );
        assert_eq!(
            policy.groups_for(&identity("no spaces", &[])),
            Err(GroupError::InvalidUserId)
        );
    }

    #[test]
    fn a_change_names_what_to_join_and_what_to_leave() {
        let list = |groups: &[&str]| -> Vec<Arc<str>> {
            groups.iter().map(|group| Arc::from(*group)).collect()
        };
        let change = GroupChange::between(
            &list(&["user_1", "a", "b", "c"]),
            &list(&["user_1", "c", "d", "a", "e"]),
        );
        assert_eq!(names(&change.joined), ["d", "e"]);
        assert_eq!(names(&change.left), ["b"]);
        assert!(!change.is_empty());
        assert!(GroupChange::between(&list(&["user_1", "a"]), &list(&["user_1", "a"])).is_empty());
    }
}

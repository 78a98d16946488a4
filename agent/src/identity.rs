//! Node identity: the app-specific machine id (as systemd's
//! `sd_id128_get_machine_app_specific`) and group validation.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Zincati's application id, used by default so node ids match Zincati's.
pub const ZINCATI_APP_ID: &str = "de35106b6ec24688b63afddaa156679b";

/// Errors deriving or validating identity values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("invalid 128-bit id {0:?}: expected 32 hex digits")]
    BadId(String),
    #[error("invalid group {0:?}: must match ^[a-zA-Z0-9.-]+$")]
    BadGroup(String),
}

fn parse_id128(s: &str) -> Result<[u8; 16], IdentityError> {
    let t = s.trim();
    let mut out = [0u8; 16];
    if t.len() != 32 {
        return Err(IdentityError::BadId(s.to_owned()));
    }
    hex::decode_to_slice(t, &mut out).map_err(|_| IdentityError::BadId(s.to_owned()))?;
    Ok(out)
}

/// HMAC-SHA256 keyed by the machine id over the app id, first 16 bytes,
/// UUID v4 bits set; 32 lowercase hex digits.
pub fn app_specific_id(machine_id: &str, app_id: &str) -> Result<String, IdentityError> {
    let key = parse_id128(machine_id)?;
    let app = parse_id128(app_id)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
        .map_err(|_| IdentityError::BadId(machine_id.to_owned()))?;
    mac.update(&app);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0F) | 0x40;
    id[8] = (id[8] & 0x3F) | 0x80;
    Ok(hex::encode(id))
}

/// Validates a group name.
pub fn validate_group(group: &str) -> Result<(), IdentityError> {
    let ok = !group.is_empty()
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadGroup(group.to_owned()))
    }
}

/// Reads `ignition.platform.id=` from a kernel command line.
pub fn platform_from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("ignition.platform.id="))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_test_vector() {
        assert_eq!(
            app_specific_id(
                "2e074e9b299c41a59923c51ae16f279b",
                "033b1b9b264441fcaa173e9e5bf35c5a"
            )
            .unwrap(),
            "4d4a86c9c6644a479560ded5d19a30c5"
        );
    }

    #[test]
    fn bad_ids_and_groups() {
        assert!(app_specific_id("xyz", ZINCATI_APP_ID).is_err());
        assert!(validate_group("default").is_ok());
        assert!(validate_group("canary-1.eu").is_ok());
        assert!(validate_group("").is_err());
        assert!(validate_group("a b").is_err());
        assert!(validate_group("a_b").is_err());
    }

    #[test]
    fn platform() {
        assert_eq!(
            platform_from_cmdline("root=x ignition.platform.id=qemu quiet\n").as_deref(),
            Some("qemu")
        );
        assert_eq!(platform_from_cmdline("root=x"), None);
    }
}

//! Syntax of the names an operator gives: LUN names and iSCSI names
//! (RFC 7143 §4.2.7: `iqn.`, `eui.` and `naa.` formats).

use super::error::CatalogueError;

/// Longest LUN name.
pub const LUN_NAME_BYTES_MAX: usize = 64;
/// Longest iSCSI name (RFC 7143 §4.2.7.1).
pub const ISCSI_NAME_BYTES_MAX: usize = 223;

/// 1–64 of `a-z A-Z 0-9 . _ -`, starting with a letter or digit (safe in
/// file names, URLs and shell commands).
pub fn check_lun_name(name: &str) -> Result<(), CatalogueError> {
    let ok = !name.is_empty()
        && name.len() <= LUN_NAME_BYTES_MAX
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CatalogueError::LunName(name.to_string()))
    }
}

/// An iSCSI name: `iqn.YYYY-MM.reversed.domain[:anything]` (lower case),
/// `eui.` + 16 hex digits, or `naa.` + 16 or 32 hex digits.
pub fn check_iqn(name: &str) -> Result<(), CatalogueError> {
    let bad = |why: &str| {
        Err(CatalogueError::Iqn {
            name: name.to_string(),
            why: why.to_string(),
        })
    };
    if name.is_empty() || name.len() > ISCSI_NAME_BYTES_MAX {
        return bad("must be 1–223 bytes");
    }
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = name.strip_prefix("eui.") {
        if rest.len() == 16 && hex(rest) {
            return Ok(());
        }
        return bad("eui. must be followed by 16 hex digits");
    }
    if let Some(rest) = name.strip_prefix("naa.") {
        if (rest.len() == 16 || rest.len() == 32) && hex(rest) {
            return Ok(());
        }
        return bad("naa. must be followed by 16 or 32 hex digits");
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return bad("must start with iqn., eui. or naa. (e.g. iqn.2026-01.org.example:disk1)");
    };
    let date = rest.get(..7).unwrap_or("");
    let date_ok = date.len() == 7
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && matches!(
            date.get(5..7).and_then(|m| m.parse::<u8>().ok()),
            Some(1..=12)
        );
    if !date_ok || rest.as_bytes().get(7) != Some(&b'.') {
        return bad("iqn. must be followed by a date YYYY-MM and a dot (iqn.2026-01.org.example)");
    }
    let tail = rest.get(8..).unwrap_or("");
    let (domain, _) = tail.split_once(':').unwrap_or((tail, ""));
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
    {
        return bad("the naming authority (reversed domain) must be lower-case letters, digits, dots and dashes");
    }
    let allowed =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':');
    if !name.chars().all(allowed) {
        return bad("only lower-case letters, digits, '.', '-' and ':' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iqns() {
        for good in [
            "iqn.2026-11.org.weft:demo",
            "iqn.1993-08.org.debian:01:abcdef",
            "eui.0123456789abcdef",
            "naa.60014051234567890123456789abcdef",
        ] {
            assert!(check_iqn(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "iqn",
            "iqn.2026.org.weft",
            "iqn.2026-13.org.weft",
            "iqn.2026-11.",
            "iqn.2026-11.Org.Weft",
            "iqn.2026-11.org.weft:has space",
            "eui.123",
            "naa.xyz",
            "target1",
        ] {
            assert!(check_iqn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lun_names() {
        assert!(check_lun_name("demo").is_ok());
        assert!(check_lun_name("vm-01.disk_a").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_lun_name(bad).is_err(), "{bad}");
        }
    }
}

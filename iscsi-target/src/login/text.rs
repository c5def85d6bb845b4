//! Text key=value data (RFC 7143 §6): parsing untrusted bytes, encoding, and
//! the `C` (continue) bit that lets one negotiation span several PDUs.

use crate::limits::{
    CHAP_VALUE_BYTES_MAX, KEY_NAME_BYTES_MAX, KEY_VALUE_BYTES_MAX, TEXT_NEGOTIATION_BYTES_MAX,
};
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("key=value pair without '='")]
    MissingEquals,
    #[error("empty key name")]
    EmptyKey,
    #[error("key name longer than {KEY_NAME_BYTES_MAX} bytes")]
    KeyTooLong,
    #[error("key name with characters outside RFC 7143's set")]
    BadKeyCharacter,
    #[error("value of {key} longer than allowed")]
    ValueTooLong { key: String },
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("negotiation text exceeds {TEXT_NEGOTIATION_BYTES_MAX} bytes")]
    TooMuchText,
}

/// Parses NUL-separated `key=value` pairs. Empty items (a trailing NUL, or
/// the padding some initiators add) are skipped.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut pairs = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        let item = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
        let (key, value) = item.split_once('=').ok_or(TextError::MissingEquals)?;
        if key.is_empty() {
            return Err(TextError::EmptyKey);
        }
        if key.len() > KEY_NAME_BYTES_MAX {
            return Err(TextError::KeyTooLong);
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.+@_#".contains(&b))
        {
            return Err(TextError::BadKeyCharacter);
        }
        let max = if key.starts_with("CHAP_") {
            CHAP_VALUE_BYTES_MAX
        } else {
            KEY_VALUE_BYTES_MAX
        };
        if value.len() > max {
            return Err(TextError::ValueTooLong {
                key: key.to_string(),
            });
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

/// Encodes pairs as `key=value\0…`.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Bytes {
    let mut out = BytesMut::new();
    for (k, v) in pairs {
        out.put_slice(k.as_ref().as_bytes());
        out.put_u8(b'=');
        out.put_slice(v.as_ref().as_bytes());
        out.put_u8(0);
    }
    out.freeze()
}

/// Collects the data of `C`-continued request PDUs until the last one.
#[derive(Debug, Default)]
pub struct TextAssembler {
    buf: BytesMut,
}

impl TextAssembler {
    /// Adds one PDU's data. Returns the whole text once `continues` is false.
    pub fn push(&mut self, data: &[u8], continues: bool) -> Result<Option<Bytes>, TextError> {
        if self.buf.len() + data.len() > TEXT_NEGOTIATION_BYTES_MAX {
            self.buf.clear();
            return Err(TextError::TooMuchText);
        }
        self.buf.put_slice(data);
        if continues {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(&mut self.buf).freeze()))
        }
    }

    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Splits a response text into PDU-sized pieces; all but the last go out
/// with the `C` bit set, each after the initiator's empty request.
#[derive(Debug, Default)]
pub struct ResponseSplitter {
    rest: Bytes,
}

impl ResponseSplitter {
    pub fn start(&mut self, text: Bytes) {
        self.rest = text;
    }

    /// The next piece and whether more follow.
    pub fn next_piece(&mut self, max_len: usize) -> (Bytes, bool) {
        let n = self.rest.len().min(max_len.max(1));
        let piece = self.rest.split_to(n);
        (piece, !self.rest.is_empty())
    }

    pub fn pending(&self) -> bool {
        !self.rest.is_empty()
    }
}

/// Parses a numeric value: decimal, or hexadecimal with `0x` (RFC 7143 §5.1).
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else {
        if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }
}

/// Decodes a binary value: `0x` hex or `0b` base64 (RFC 7143 §6.1).
pub fn parse_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        // An odd digit count means a leading zero nibble.
        let padded;
        let hex = if hex.len() % 2 == 1 {
            padded = format!("0{hex}");
            padded.as_str()
        } else {
            hex
        };
        if hex.is_empty() {
            return None;
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
            })
            .collect()
    } else if let Some(b64) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        base64_decode(b64)
    } else {
        None
    }
}

pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cases() {
        type Case<'a> = (&'a [u8], Result<Vec<(&'a str, &'a str)>, TextError>);
        let cases: &[Case] = &[
            (b"A=1\0B=two\0", Ok(vec![("A", "1"), ("B", "two")])),
            (b"A=\0\0\0", Ok(vec![("A", "")])),
            (b"A=x=y", Ok(vec![("A", "x=y")])),
            (b"novalue\0", Err(TextError::MissingEquals)),
            (b"=1\0", Err(TextError::EmptyKey)),
            (b"A B=1\0", Err(TextError::BadKeyCharacter)),
            (b"\xff=1\0", Err(TextError::NotUtf8)),
        ];
        for (input, want) in cases {
            let got = parse(input);
            let want = want.as_ref().map_err(|e| e.clone()).map(|v| {
                v.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            });
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
        }
        let long_key = format!("{}=1", "K".repeat(64));
        assert_eq!(parse(long_key.as_bytes()), Err(TextError::KeyTooLong));
        let long_val = format!("K={}", "v".repeat(256));
        assert!(matches!(
            parse(long_val.as_bytes()),
            Err(TextError::ValueTooLong { .. })
        ));
    }

    #[test]
    fn numbers_and_binary() {
        assert_eq!(parse_number("262144"), Some(262144));
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
        assert_eq!(parse_binary("0x0a0B"), Some(vec![10, 11]));
        assert_eq!(parse_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(parse_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(parse_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(parse_binary("0xzz"), None);
        assert_eq!(parse_binary("12"), None);
        assert_eq!(encode_hex(&[1, 0xff]), "0x01ff");
    }

    #[test]
    fn assembler_and_splitter() {
        let mut a = TextAssembler::default();
        assert_eq!(a.push(b"A=", true).unwrap(), None);
        assert_eq!(
            a.push(b"1\0", false).unwrap().unwrap(),
            Bytes::from_static(b"A=1\0")
        );
        let mut s = ResponseSplitter::default();
        s.start(Bytes::from_static(b"0123456789"));
        assert_eq!(s.next_piece(4), (Bytes::from_static(b"0123"), true));
        assert_eq!(s.next_piece(4), (Bytes::from_static(b"4567"), true));
        assert_eq!(s.next_piece(4), (Bytes::from_static(b"89"), false));
    }
}

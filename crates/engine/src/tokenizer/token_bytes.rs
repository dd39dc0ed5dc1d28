//! The raw bytes one token stands for, and how to show them as a string.
//!
//! OpenAI's chat log-probs carry `bytes` so a client can join tokens that split a UTF-8 character (an emoji is
//! often 2–4 byte tokens). Decoding such a token alone gives U+FFFD, so the bytes must come from the vocabulary
//! piece itself: GPT-2 byte-level pieces map each char back to a byte through the `bytes_to_unicode` table, and
//! SentencePiece byte-fallback pieces are spelled `<0xNN>`. The `tokenizers` crate keeps its byte table private,
//! hence the small copy here. A token whose bytes are not valid UTF-8 is shown as `bytes:\xNN...`, the spelling
//! OpenAI's API uses.

use std::collections::HashMap;
use std::sync::OnceLock;

/// GPT-2's reversible byte <-> printable-char map, inverted: char -> byte.
pub(crate) fn unicode_to_byte() -> &'static HashMap<char, u8> {
    static TABLE: OnceLock<HashMap<char, u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut next_unprintable = 256u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    b as u32
                } else {
                    next_unprintable += 1;
                    next_unprintable - 1
                };
                (char::from_u32(c).expect("table chars are valid"), b)
            })
            .collect()
    })
}

/// `<0xNN>` -> NN (SentencePiece byte fallback).
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok()).flatten()
}

/// Raw bytes of one token. `decoded` is the token decoded alone; `piece` its vocabulary spelling. When `decoded`
/// is intact UTF-8 it is the answer; otherwise the piece is mapped back to bytes.
pub fn token_bytes(decoded: &str, piece: Option<&str>) -> Vec<u8> {
    if !decoded.contains('\u{FFFD}') {
        return decoded.as_bytes().to_vec();
    }
    if let Some(piece) = piece {
        if let Some(b) = byte_fallback(piece) {
            return vec![b];
        }
        let table = unicode_to_byte();
        if let Some(bytes) = piece
            .chars()
            .map(|c| table.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
        {
            return bytes;
        }
    }
    decoded.as_bytes().to_vec()
}

/// How a token is shown: its text when the bytes are UTF-8, else `bytes:` and `\xNN` escapes.
pub fn token_display(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => {
            let mut s = String::from("bytes:");
            for b in bytes {
                s.push_str(&format!("\\x{b:02x}"));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_pieces_map_back_to_raw_bytes() {
        // "🌟" is F0 9F 8C 9F; GPT-2's table spells F0 as 'ð' and 9F as 'Ł', 8C as 'Į'.
        assert_eq!(token_bytes("\u{FFFD}", Some("ðŁ")), vec![0xF0, 0x9F]);
        assert_eq!(token_bytes("\u{FFFD}", Some("ĮŁ")), vec![0x8C, 0x9F]);
        // 'Ġ' is the space byte.
        assert_eq!(token_bytes(" hi", Some("Ġhi")), b" hi".to_vec());
    }

    #[test]
    fn table_is_a_bijection_over_all_bytes() {
        let table = unicode_to_byte();
        assert_eq!(table.len(), 256);
        let mut seen = [false; 256];
        for &b in table.values() {
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'A'], b'A');
    }

    #[test]
    fn sentencepiece_byte_fallback() {
        assert_eq!(token_bytes("\u{FFFD}", Some("<0xE2>")), vec![0xE2]);
        assert_eq!(byte_fallback("<0xZZ>"), None);
    }

    #[test]
    fn display_escapes_only_broken_utf8() {
        assert_eq!(token_display("héllo".as_bytes()), "héllo");
        assert_eq!(token_display(&[0xF0, 0x9F]), "bytes:\\xf0\\x9f");
    }
}

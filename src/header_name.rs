//! RFC 9110 field names (`token`), as accepted in configuration.

/// True for a non-empty RFC 9110 `token`: the characters a header or cookie name may use.
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_names_and_separators_are_not() {
        for good in ["authorization", "X-Api-Key", "x_token", "a.b~c"] {
            assert!(is_valid_header_name(good), "{good}");
        }
        for bad in ["", "a b", "a:b", "a\r\nb", "ä", "(x)", "a/b", "a\"b"] {
            assert!(!is_valid_header_name(bad), "{bad:?}");
        }
    }
}

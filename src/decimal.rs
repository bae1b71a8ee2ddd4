//! Numbers written in decimal without the formatting machinery: the filter writes a few on
//! every request (a client address, reply headers), and `Display` costs several times more
//! inside the VM.

/// A number's decimal digits, on the stack.
pub struct Digits {
    bytes: [u8; 20],
    start: usize,
}

impl Digits {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

/// The decimal digits of `n`.
pub fn digits(mut n: u64) -> Digits {
    let mut digits = Digits {
        bytes: [0; 20],
        start: 20,
    };
    loop {
        digits.start -= 1;
        digits.bytes[digits.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits
}

/// Appends `n` in decimal.
pub fn push(text: &mut String, n: u64) {
    text.extend(digits(n).as_bytes().iter().map(|&digit| char::from(digit)));
}

/// `n` in decimal.
pub fn string(n: u64) -> String {
    let mut text = String::with_capacity(20);
    push(&mut text, n);
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimals_are_written_like_display() {
        for n in [0, 7, 10, 99, 100, 3600, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(super::string(n), n.to_string());
        }
        let mut text = String::from("a=");
        super::push(&mut text, 42);
        assert_eq!(text, "a=42");
        assert_eq!(super::digits(1_048_575).as_bytes(), b"1048575");
    }
}

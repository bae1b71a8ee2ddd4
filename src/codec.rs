//! The byte layout of everything the filter keeps in shared data: fixed-width little-endian
//! integers, fingerprints and length-prefixed byte strings, a record led by its format version.
//! Any VM of any filter version may have written a key, so reading is bounds-checked throughout:
//! whatever the bytes, a decoder gets a value or nothing, never a panic.

use crate::fingerprint::Fingerprint;

/// Builds a stored value, field by field.
pub struct Writer {
    bytes: Vec<u8>,
}

/// A byte string longer than its length field can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl Writer {
    /// A record: its format version first, so a reader knows the layout that follows.
    pub fn versioned(version: u8, capacity: usize) -> Writer {
        let mut bytes = Vec::with_capacity(capacity);
        bytes.push(version);
        Writer { bytes }
    }

    /// A container of records (whose own versions tell their layout).
    pub fn unversioned(capacity: usize) -> Writer {
        Writer {
            bytes: Vec::with_capacity(capacity),
        }
    }

    pub fn u8(&mut self, value: u8) -> &mut Writer {
        self.bytes.push(value);
        self
    }

    pub fn u16(&mut self, value: u16) -> &mut Writer {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u32(&mut self, value: u32) -> &mut Writer {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Writer {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// `count` zero bytes, to keep the fields after them aligned.
    pub fn padding(&mut self, count: usize) -> &mut Writer {
        self.bytes.resize(self.bytes.len() + count, 0);
        self
    }

    pub fn fingerprint(&mut self, fingerprint: &Fingerprint) -> &mut Writer {
        self.bytes.extend_from_slice(&fingerprint.0);
        self
    }

    /// `value` after its length as a u16.
    pub fn short_bytes(&mut self, value: &[u8]) -> Result<&mut Writer, TooLong> {
        let length = u16::try_from(value.len()).map_err(|_| TooLong)?;
        self.u16(length);
        self.bytes.extend_from_slice(value);
        Ok(self)
    }

    /// A byte for absent (0) or present (1), then a present value after its length as a u32.
    /// A value longer than that (impossible in a 32-bit VM) is written as absent.
    pub fn optional(&mut self, value: Option<&[u8]>) -> &mut Writer {
        match value.and_then(|value| Some((u32::try_from(value.len()).ok()?, value))) {
            None => self.u8(0),
            Some((length, value)) => {
                self.u8(1).u32(length);
                self.bytes.extend_from_slice(value);
                self
            }
        }
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

/// Reads fields off the front of a stored value; every read checks the bytes are there.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    pub fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(count)?;
        self.rest = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.array().map(u8::from_le_bytes)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// Skips `count` bytes of padding, whatever they hold.
    pub fn padding(&mut self, count: usize) -> Option<()> {
        self.take(count).map(|_| ())
    }

    pub fn fingerprint(&mut self) -> Option<Fingerprint> {
        self.array().map(Fingerprint)
    }

    /// What `Writer::short_bytes` wrote.
    pub fn short_bytes(&mut self) -> Option<&'a [u8]> {
        let length = self.u16()?;
        self.take(usize::from(length))
    }

    /// What `Writer::optional` wrote; `None` when it is not there or malformed.
    pub fn optional(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            1 => {
                let length = usize::try_from(self.u32()?).ok()?;
                self.take(length).map(Some)
            }
            _ => None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.rest.is_empty()
    }

    /// How many bytes are left to read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

/// A record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Versioned<T> {
    /// No bytes at all: never written.
    Empty,
    /// Led by another format version: written by another version of the filter.
    OtherVersion,
    /// This version, but not a whole record of it (cut short, too long, or a bad field).
    Malformed,
    Value(T),
}

/// Reads a record written by `Writer::versioned(version, ..)`: `fields` reads what follows the
/// version byte, and the record is whole only when they are all the bytes there are.
pub fn read_versioned<'a, T>(
    bytes: &'a [u8],
    version: u8,
    fields: impl FnOnce(&mut Reader<'a>) -> Option<T>,
) -> Versioned<T> {
    let mut reader = Reader::new(bytes);
    match reader.u8() {
        None => return Versioned::Empty,
        Some(found) if found != version => return Versioned::OtherVersion,
        Some(_) => {}
    }
    match fields(&mut reader) {
        Some(value) if reader.is_done() => Versioned::Value(value),
        _ => Versioned::Malformed,
    }
}

#[cfg(test)]
pub mod hostile {
    //! Bytes a decoder must survive, for the tests of every stored format.

    /// Every truncation of `valid`, `valid` with each byte replaced by a few others, and
    /// pseudo-random strings (a fixed seed, so a failure repeats): of every length up to twice
    /// `valid`'s, half of them led by `valid`'s first byte so that they reach past a version
    /// check, and as many of exactly `valid`'s length.
    pub fn inputs(valid: &[u8]) -> Vec<Vec<u8>> {
        let mut inputs: Vec<Vec<u8>> = (0..valid.len()).map(|cut| valid[..cut].to_vec()).collect();
        for at in 0..valid.len() {
            for replacement in [0, 1, 2, 0x7f, 0x80, 0xff, !valid[at]] {
                let mut changed = valid.to_vec();
                changed[at] = replacement;
                inputs.push(changed);
            }
        }
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..4_000 {
            let length = if round % 2 == 0 {
                valid.len()
            } else {
                (next() % (2 * valid.len() as u64 + 2)) as usize
            };
            let mut bytes: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            if round % 4 < 2 {
                if let (Some(first), Some(&version)) = (bytes.first_mut(), valid.first()) {
                    *first = version;
                }
            }
            inputs.push(bytes);
        }
        inputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_as_written_in_little_endian() {
        let mut writer = Writer::versioned(7, 64);
        writer
            .u8(0xab)
            .u16(0x0102)
            .padding(2)
            .u32(0x0304_0506)
            .u64(u64::MAX - 1)
            .fingerprint(&Fingerprint([9; 16]))
            .optional(None)
            .optional(Some(b"xy"));
        writer.short_bytes(b"abc").unwrap();
        let bytes = writer.finish();
        assert_eq!(&bytes[..6], &[7, 0xab, 0x02, 0x01, 0, 0]);
        let read = read_versioned(&bytes, 7, |reader| {
            Some((
                reader.u8()?,
                reader.u16()?,
                reader.padding(2)?,
                reader.u32()?,
                reader.u64()?,
                reader.fingerprint()?,
                reader.optional()?,
                reader.optional()?,
                reader.short_bytes()?,
            ))
        });
        assert_eq!(
            read,
            Versioned::Value((
                0xab,
                0x0102,
                (),
                0x0304_0506,
                u64::MAX - 1,
                Fingerprint([9; 16]),
                None,
                Some(&b"xy"[..]),
                &b"abc"[..],
            ))
        );
    }

    #[test]
    fn records_are_told_apart_by_version_and_wholeness() {
        let byte = |reader: &mut Reader| reader.u8();
        assert_eq!(read_versioned(b"", 1, byte), Versioned::Empty);
        assert_eq!(read_versioned(&[2, 5], 1, byte), Versioned::OtherVersion);
        assert_eq!(read_versioned(&[1], 1, byte), Versioned::Malformed);
        assert_eq!(read_versioned(&[1, 5, 6], 1, byte), Versioned::Malformed);
        assert_eq!(read_versioned(&[1, 5], 1, byte), Versioned::Value(5));
    }

    #[test]
    fn lengths_that_do_not_fit_are_refused() {
        assert_eq!(
            Writer::unversioned(0).short_bytes(&[0; 65_536]).err(),
            Some(TooLong)
        );
        // A length field naming more bytes than there are, and an unknown presence byte.
        assert_eq!(Reader::new(&[5, 0, 1, 2]).short_bytes(), None);
        assert_eq!(Reader::new(&[1, 9, 0, 0, 0, 1]).optional(), None);
        assert_eq!(Reader::new(&[1, 255, 255, 255, 255]).optional(), None);
        assert_eq!(Reader::new(&[2]).optional(), None);
    }
}

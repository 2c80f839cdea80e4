//! Bounds-checked reading of Kafka primitive types from borrowed bytes.

/// A malformed message: a field runs past the end, or a length lies.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed message: {0}")]
pub struct CursorError(pub &'static str);

pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8], pos: usize) -> Cursor<'a> {
        Cursor { bytes, pos }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(CursorError("length overflow"))?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(CursorError("field runs past the end of the frame"))?;
        self.pos = end;
        Ok(slice)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), CursorError> {
        self.take(n).map(|_| ())
    }

    pub fn i16(&mut self) -> Result<i16, CursorError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, CursorError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn uvarint(&mut self) -> Result<u64, CursorError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CursorError("varint longer than 10 bytes"))
    }

    /// A length from the wire as a usize, never trusted beyond the bytes left.
    pub fn len_from(&self, raw: u64) -> Result<usize, CursorError> {
        let n = usize::try_from(raw).map_err(|_| CursorError("length overflow"))?;
        if n > self.bytes.len().saturating_sub(self.pos) {
            return Err(CursorError("length runs past the end of the frame"));
        }
        Ok(n)
    }

    /// Array length: compact (`uvarint n+1`) or classic (`i32`); `None` is null.
    pub fn array_len(&mut self, compact: bool) -> Result<Option<u64>, CursorError> {
        if compact {
            Ok(self.uvarint()?.checked_sub(1))
        } else {
            let n = self.i32()?;
            Ok(u64::try_from(n).ok())
        }
    }

    /// Skips a (nullable) string or bytes field.
    pub fn skip_string_or_bytes(
        &mut self,
        compact: bool,
        classic_len_bytes: u8,
    ) -> Result<(), CursorError> {
        let len = if compact {
            match self.uvarint()?.checked_sub(1) {
                Some(n) => n,
                None => return Ok(()),
            }
        } else if classic_len_bytes == 2 {
            match u64::try_from(self.i16()?) {
                Ok(n) => n,
                Err(_) => return Ok(()),
            }
        } else {
            match u64::try_from(self.i32()?) {
                Ok(n) => n,
                Err(_) => return Ok(()),
            }
        };
        let n = self.len_from(len)?;
        self.skip(n)
    }

    /// Skips a tagged-field section, calling `each(tag, start, end)` for
    /// every field so callers can pick out the tags they care about.
    pub fn tagged_fields(
        &mut self,
        mut each: impl FnMut(u64, usize, usize),
    ) -> Result<(), CursorError> {
        let count = self.uvarint()?;
        for _ in 0..count {
            let tag = self.uvarint()?;
            let size = self.uvarint()?;
            let size = self.len_from(size)?;
            let start = self.pos;
            self.skip(size)?;
            each(tag, start, start + size);
        }
        Ok(())
    }

    pub fn skip_tagged_fields(&mut self) -> Result<(), CursorError> {
        self.tagged_fields(|_, _, _| {})
    }
}

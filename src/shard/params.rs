//! The parameters of the Bind being routed: formats and values as sent, and a key read from
//! them in the column's type (text or binary format). Pure: no I/O.

use super::route::RouteError;
use super::KeyValue;

/// Parameters of the Bind being routed (absent for a simple Query).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params<'a> {
    formats: Vec<i16>,
    values: Vec<Option<&'a [u8]>>,
}

impl<'a> Params<'a> {
    /// Reads a Bind body after its portal and statement names. None: malformed.
    pub fn parse(b: &'a [u8]) -> Option<Params<'a>> {
        let mut at = 0;
        let i16_at = |at: &mut usize| -> Option<i16> {
            let v = i16::from_be_bytes(b.get(*at..*at + 2)?.try_into().ok()?);
            *at += 2;
            Some(v)
        };
        let nf = i16_at(&mut at)?.max(0) as usize;
        let mut formats = Vec::with_capacity(nf);
        for _ in 0..nf {
            formats.push(i16_at(&mut at)?);
        }
        let np = i16_at(&mut at)?.max(0) as usize;
        let mut values = Vec::with_capacity(np);
        for _ in 0..np {
            let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            if len < 0 {
                values.push(None);
            } else {
                values.push(Some(b.get(at..at + len as usize)?));
                at += len as usize;
            }
        }
        Some(Params { formats, values })
    }

    /// How many parameters the Bind has.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub(crate) fn key(&self, n: usize, ty: super::KeyType) -> Result<Option<KeyValue>, RouteError> {
        let i = n.checked_sub(1).filter(|&i| i < self.values.len());
        let Some(i) = i else {
            return Err(RouteError::BadKey(format!("there is no parameter ${n}")));
        };
        let binary = match self.formats.as_slice() {
            [] => false,
            [one] => *one == 1,
            many => many.get(i) == Some(&1),
        };
        match self.values[i] {
            None => Ok(None),
            Some(v) if binary => ty.from_binary(v).map(Some).map_err(RouteError::BadKey),
            Some(v) => {
                let s = std::str::from_utf8(v).map_err(|_| RouteError::BadKey("parameter is not UTF-8".into()))?;
                ty.from_text(s).map(Some).map_err(RouteError::BadKey)
            }
        }
    }
}

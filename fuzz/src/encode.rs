//! Writes values in the byte format `arbitrary` 1.x reads them from, so
//! seed inputs can be written as values rather than as opaque bytes.
//!
//! The format: integers little-endian, `bool` one byte, an enum a `u32`
//! whose top bits pick the variant (`(u32 * variants) >> 32`) followed by
//! its fields, a struct its fields in order, an array its elements, and a
//! trailing `Vec` each element behind a `1` byte. `write_seeds` decodes
//! every seed it writes and checks it reads back as the value encoded, so
//! a change of format in `arbitrary` is caught there.

pub trait Encode {
    fn encode(&self, out: &mut Vec<u8>);
}

macro_rules! encode_le {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

encode_le!(u8, u16, u32, u64, i16);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        for item in self {
            item.encode(out);
        }
    }
}

/// The discriminant selecting variant `index` of an enum with `count`
/// variants: the smallest `u32` with `(d * count) >> 32 == index`.
pub fn variant(out: &mut Vec<u8>, index: u32, count: u32) {
    assert!(index < count);
    let d = (u64::from(index) << 32).div_ceil(u64::from(count));
    (d as u32).encode(out);
}

/// A `Vec` that is the whole input (or its last field): what
/// `Arbitrary::arbitrary_take_rest` reads.
pub fn encode_rest<T: Encode>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        true.encode(&mut out);
        item.encode(&mut out);
    }
    out
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => false.encode(out),
            Some(value) => {
                true.encode(out);
                value.encode(out);
            }
        }
    }
}

/// A `Vec` as the last field of an input, read with `arbitrary_take_rest`
/// (elsewhere `arbitrary` reads a length first: not supported here).
impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend(encode_rest(self));
    }
}

/// `Encode` for a struct: its fields in order, as `derive(Arbitrary)`
/// reads them.
#[macro_export]
macro_rules! encode_fields {
    ($name:ident { $($field:ident),* $(,)? }) => {
        impl $crate::encode::Encode for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                $($crate::encode::Encode::encode(&self.$field, out);)*
            }
        }
    };
}

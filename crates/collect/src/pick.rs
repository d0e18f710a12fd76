//! Typed pieces for reading a few fields of a JSON document without building a
//! `serde_json::Value`, while accepting and rejecting exactly the documents that parsing into a
//! `Value` would.
//!
//! Everything here deserializes through `deserialize_any`, as `Value` does: serde_json then
//! checks the same things (string escapes and lone surrogates, UTF-8, the nesting limit,
//! numbers in range) and fails on the same inputs. Only nothing is built: strings are borrowed
//! from the input when they hold no escape, skipped values allocate nothing.
//!
//! Objects must be read "last key wins", as `Value`'s map does with a repeated key.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Any JSON value, validated and dropped.
pub(crate) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// A JSON value reduced to what field readers look at: a string, a number, null, or something
/// else (a bool, an array or an object, skipped).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Any<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    I64(i64),
    F64(f64),
    Null,
    #[default]
    Other,
}

impl<'a> Any<'a> {
    /// The string, as `Value::as_str` would give it.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Any::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The number as `serde_json::Number` (`None` for anything else, and for a non-finite
    /// float, which `Value` turns into null).
    pub(crate) fn number(&self) -> Option<serde_json::Number> {
        match *self {
            Any::U64(u) => Some(u.into()),
            Any::I64(i) => Some(i.into()),
            Any::F64(f) => serde_json::Number::from_f64(f),
            _ => None,
        }
    }

    /// Whether `Value` would hold null here (a non-finite float becomes null there).
    pub(crate) fn is_null(&self) -> bool {
        match *self {
            Any::Null => true,
            Any::F64(f) => !f.is_finite(),
            _ => false,
        }
    }
}

/// A token count from an optional field, as the `Value` readers define it: missing or null is
/// 0; a non-negative integer (or integral float below 1.8e19) is itself; anything else is a
/// wrong type (`None`).
pub(crate) fn count(v: Option<&Any<'_>>) -> Option<u64> {
    match v {
        None => Some(0),
        Some(a) if a.is_null() => Some(0),
        Some(a) => {
            let n = a.number()?;
            n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19)
                    .map(|f| f as u64)
            })
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Any<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
}

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Any<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Any<'de>, E> {
        Ok(Any::Other)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Any<'de>, E> {
        Ok(Any::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Any<'de>, E> {
        Ok(Any::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Any<'de>, E> {
        Ok(Any::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Any<'de>, E> {
        Ok(Any::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Any<'de>, E> {
        Ok(Any::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Any<'de>, E> {
        Ok(Any::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Any<'de>, E> {
        Ok(Any::Null)
    }
    fn visit_none<E>(self) -> Result<Any<'de>, E> {
        Ok(Any::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Any<'de>, A::Error> {
        SkipVisitor.visit_seq(seq).map(|_| Any::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Any<'de>, A::Error> {
        SkipVisitor.visit_map(map).map(|_| Any::Other)
    }
}

/// An object read field by field: the visitor of [`Object`] gives every key to `T::field`,
/// which reads (or skips) its value; anything that is not an object gives `Object::Not`.
pub(crate) enum Object<T> {
    Is(T),
    Not,
}

/// The fields of an object that a reader keeps. `field` must read the value of `key` from
/// `map` (with `map.next_value::<Skip>()` when it is not wanted), keeping the last of repeated
/// keys.
pub(crate) trait Fields<'de>: Default {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

impl<'de, T: Fields<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjectVisitor(std::marker::PhantomData))
    }
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Fields<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = Object<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }
    fn visit_str<E>(self, _: &str) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }
    fn visit_unit<E>(self) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }
    fn visit_none<E>(self) -> Result<Object<T>, E> {
        Ok(Object::Not)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Object<T>, A::Error> {
        SkipVisitor.visit_seq(seq).map(|_| Object::Not)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<T>, A::Error> {
        let mut out = T::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            out.field(&key.0, &mut map)?;
        }
        Ok(Object::Is(out))
    }
}

/// An object key, borrowed when it holds no escape.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Keys are strings: serde_json reads them as `Value`'s map does.
        match Any::deserialize(d)? {
            Any::Str(s) => Ok(Key(s)),
            _ => Ok(Key(Cow::Borrowed(""))),
        }
    }
}

/// An array of `T` (each element through `T`'s own `deserialize_any`), or `None` when the
/// value is not an array.
pub(crate) struct List<T>(pub(crate) Option<Vec<T>>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor(std::marker::PhantomData))
    }
}

struct ListVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = List<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<List<T>, E> {
        Ok(List(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<List<T>, E> {
        Ok(List(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<List<T>, E> {
        Ok(List(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<List<T>, E> {
        Ok(List(None))
    }
    fn visit_str<E>(self, _: &str) -> Result<List<T>, E> {
        Ok(List(None))
    }
    fn visit_unit<E>(self) -> Result<List<T>, E> {
        Ok(List(None))
    }
    fn visit_none<E>(self) -> Result<List<T>, E> {
        Ok(List(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(x) = seq.next_element::<T>()? {
            out.push(x);
        }
        Ok(List(Some(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<List<T>, A::Error> {
        SkipVisitor.visit_map(map).map(|_| List(None))
    }
}

/// A value that may be a string or an object read as `T`: which one it is, or null, or
/// something else (skipped).
pub(crate) enum Shape<'a, T> {
    Str(Cow<'a, str>),
    Obj(T),
    /// Null (or a non-finite float, which `Value` holds as null).
    Null,
    Other,
}

impl<'de: 'a, 'a, T: Fields<'de>> Deserialize<'de> for Shape<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor(std::marker::PhantomData))
    }
}

struct ShapeVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Fields<'de>> Visitor<'de> for ShapeVisitor<T> {
    type Value = Shape<'de, T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(if f.is_finite() {
            Shape::Other
        } else {
            Shape::Null
        })
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Shape::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Shape::Str(Cow::Owned(v.to_string())))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Shape::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Shape::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        SkipVisitor.visit_seq(seq).map(|_| Shape::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        ObjectVisitor::<T>(std::marker::PhantomData)
            .visit_map(map)
            .map(|o| match o {
                Object::Is(t) => Shape::Obj(t),
                Object::Not => Shape::Other,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Whether a document parses is the same as for `Value`, and [`count`] agrees with the
    /// `Value` reading of a number.
    #[test]
    fn accepts_and_rejects_what_value_does() {
        let docs: &[&[u8]] = &[
            br#"{"a":"x"}"#,
            br#"{"a":"\ud800"}"#,
            br#"{"a":"\ud83d\ude00"}"#,
            br#"["\udc00x"]"#,
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\x01\"}",
            br#"{"a":1e400}"#,
            br#"{"a":-0}"#,
            br#"{"a":18446744073709551616}"#,
            br#"{"a":[1,2,{"b":null}]} x"#,
            br#"{"a" 1}"#,
            br#"{"a":tru}"#,
            b"",
            b"  ",
            br#""str""#,
        ];
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
        let mut all: Vec<Vec<u8>> = docs.iter().map(|d| d.to_vec()).collect();
        for n in [126, 127, 128, 129, 200] {
            all.push(deep(n));
            let mut obj = br#"{"a":"#.to_vec();
            obj.extend(deep(n));
            obj.push(b'}');
            all.push(obj);
        }
        for d in &all {
            let v = serde_json::from_slice::<Value>(d).is_ok();
            assert_eq!(serde_json::from_slice::<Skip>(d).is_ok(), v, "{d:?}");
            assert_eq!(serde_json::from_slice::<Any>(d).is_ok(), v, "{d:?}");
        }
        for n in [
            "0",
            "-0",
            "1",
            "-1",
            "1.0",
            "1.5",
            "1e3",
            "-1e3",
            "17999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "1.7e19",
            "1.9e19",
            "null",
            "true",
            "\"1\"",
            "[]",
            "{}",
            "0.0",
            "-0.0",
            "2.5e-3",
        ] {
            let v: Value = serde_json::from_str(n).unwrap();
            let a: Any = serde_json::from_str(n).unwrap();
            let by_value = match &v {
                Value::Null => Some(0),
                Value::Number(n) => n.as_u64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19)
                        .map(|f| f as u64)
                }),
                _ => None,
            };
            assert_eq!(count(Some(&a)), by_value, "{n}");
            assert_eq!(
                a.number().map(|n| n.to_string()),
                v.as_number().map(|n| n.to_string())
            );
        }
    }
}

//! Reading a node's ROS parameters with the checks its JSON schema states: a missing parameter takes its
//! default, a wrong type or a value out of range is an error that names the parameter.
use std::collections::HashMap;

use r2r::{Node, Parameter, ParameterValue};

use crate::{Error, Result};

/// A snapshot of a node's parameters with typed, checked getters.
pub struct Params {
    values: HashMap<String, ParameterValue>,
}

fn bad(key: &str, why: String) -> Error {
    Error::invalid(format!("parameter {key}"), why)
}

impl Params {
    /// The parameters `node` was started with (params file, `-p`, launch).
    pub fn of(node: &Node) -> Result<Self> {
        let table = node
            .params
            .lock()
            .map_err(|_| Error::Ros("parameter table poisoned".into()))?;
        Ok(Self::from_values(table.iter().map(
            |(k, p): (&String, &Parameter)| (k.clone(), p.value.clone()),
        )))
    }

    /// From plain values (tests).
    pub fn from_values(values: impl IntoIterator<Item = (String, ParameterValue)>) -> Self {
        Self {
            values: values.into_iter().collect(),
        }
    }

    fn get(&self, key: &str) -> Option<&ParameterValue> {
        match self.values.get(key) {
            None | Some(ParameterValue::NotSet) => None,
            Some(v) => Some(v),
        }
    }

    /// A string (default when unset).
    pub fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(ParameterValue::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(key, format!("{other:?} is not a string"))),
        }
    }

    /// A string that must be one of `allowed` (or match `also`, e.g. `cuda:N`).
    pub fn choice(
        &self,
        key: &str,
        default: &str,
        allowed: &[&str],
        also: fn(&str) -> bool,
    ) -> Result<String> {
        let s = self.string(key, default)?;
        if allowed.contains(&s.as_str()) || also(&s) {
            Ok(s)
        } else {
            Err(bad(key, format!("{s:?} is not one of {allowed:?}")))
        }
    }

    /// A non-empty string.
    pub fn non_empty(&self, key: &str, default: &str) -> Result<String> {
        let s = self.string(key, default)?;
        if s.trim().is_empty() {
            return Err(bad(
                key,
                "required, must not be empty (set it in the params file or with -p)".into(),
            ));
        }
        Ok(s)
    }

    /// A bool.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(ParameterValue::Bool(b)) => Ok(*b),
            Some(other) => Err(bad(key, format!("{other:?} is not a bool"))),
        }
    }

    /// A number in `[min, max]` (integers are accepted for doubles, as launch files write `1` for `1.0`);
    /// `exclusive_min` makes the lower bound open.
    pub fn number(
        &self,
        key: &str,
        default: f64,
        min: f64,
        max: f64,
        exclusive_min: bool,
    ) -> Result<f64> {
        let v = match self.get(key) {
            None => default,
            Some(ParameterValue::Double(d)) => *d,
            Some(ParameterValue::Integer(i)) => *i as f64,
            Some(other) => return Err(bad(key, format!("{other:?} is not a number"))),
        };
        let low_ok = if exclusive_min { v > min } else { v >= min };
        if !v.is_finite() || !low_ok || v > max {
            let lo = if exclusive_min { "(" } else { "[" };
            return Err(bad(key, format!("{v} is outside {lo}{min}, {max}]")));
        }
        Ok(v)
    }

    /// An integer in `[min, max]`.
    pub fn integer(&self, key: &str, default: i64, min: i64, max: i64) -> Result<i64> {
        let v = match self.get(key) {
            None => default,
            Some(ParameterValue::Integer(i)) => *i,
            Some(other) => return Err(bad(key, format!("{other:?} is not an integer"))),
        };
        if v < min || v > max {
            return Err(bad(key, format!("{v} is outside [{min}, {max}]")));
        }
        Ok(v)
    }

    /// A non-empty list of non-empty strings (a single string is taken as a list of one).
    pub fn strings(&self, key: &str, default: &[String]) -> Result<Vec<String>> {
        let v = match self.get(key) {
            None => default.to_vec(),
            Some(ParameterValue::StringArray(a)) => a.clone(),
            Some(ParameterValue::String(s)) => vec![s.clone()],
            Some(other) => return Err(bad(key, format!("{other:?} is not a string array"))),
        };
        if v.is_empty() || v.iter().any(|s| s.trim().is_empty()) {
            return Err(bad(key, "needs at least one non-empty string".into()));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, ParameterValue)]) -> Params {
        Params::from_values(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())))
    }

    #[test]
    fn defaults_types_and_ranges() {
        let ps = p(&[
            ("a", ParameterValue::Double(0.5)),
            ("b", ParameterValue::Integer(1)),
            ("s", ParameterValue::String("x".into())),
        ]);
        assert_eq!(ps.number("a", 0.0, 0.0, 1.0, false).unwrap(), 0.5);
        assert_eq!(ps.number("b", 0.0, 0.0, 1.0, true).unwrap(), 1.0);
        assert_eq!(ps.number("missing", 0.3, 0.0, 1.0, false).unwrap(), 0.3);
        let e = ps.number("a", 0.0, 0.6, 1.0, false).unwrap_err();
        assert!(e.to_string().contains("parameter a"), "{e}");
        assert!(ps.number("s", 0.0, 0.0, 1.0, false).is_err());
        assert!(ps.integer("a", 0, 0, 9).is_err());
        assert!(ps.bool("s", false).is_err());
        assert_eq!(ps.strings("s", &[]).unwrap(), ["x"]);
        assert!(ps.strings("missing", &[]).is_err());
        assert!(ps.choice("s", "cpu", &["cpu", "cuda"], |_| false).is_err());
        assert_eq!(ps.choice("z", "cpu", &["cpu"], |_| false).unwrap(), "cpu");
    }
}

//! ROS 2 type description hashes (`RIHS01_<sha256>`, REP 2011) of the message types in
//! [`crate::data::bag::msgs`], as rosbag2 Jazzy records them in `metadata.yaml` (`type_description_hash`) and in
//! the MCAP channels (`topic_type_hash`).
//!
//! The hash is the SHA-256 of a JSON text: `{"type_description": T, "referenced_type_descriptions": [R…]}`
//! where each description is `{"type_name": …, "fields": [{"name": …, "type": {"type_id": …, "capacity": …,
//! "string_capacity": …, "nested_type_name": …}}…]}` (constants and defaults excluded), referenced types
//! sorted by name, written with `", "` and `": "` separators.

/// Field type ids of REP 2011 (`type_description_interfaces/FieldType`).
fn primitive_id(t: &str) -> Option<u8> {
    Some(match t {
        "int8" => 2,
        "uint8" => 3,
        "int16" => 4,
        "uint16" => 5,
        "int32" => 6,
        "uint32" => 7,
        "int64" => 8,
        "uint64" => 9,
        "float32" => 10,
        "float64" => 11,
        "char" => 13,
        "bool" => 15,
        "byte" => 16,
        "string" => 17,
        _ => return None,
    })
}

struct Field {
    name: String,
    type_id: u32,
    capacity: u64,
    string_capacity: u64,
    nested: String,
}

/// Resolves a field's type name to a full `pkg/msg/Type` (relative names are in `pkg`).
fn full_name(t: &str, pkg: &str) -> String {
    match t.split_once('/') {
        Some((p, ty)) if !ty.contains('/') => format!("{p}/msg/{ty}"),
        Some(_) => t.to_string(),
        None => match t {
            "Header" => "std_msgs/msg/Header".into(),
            _ => format!("{pkg}/msg/{t}"),
        },
    }
}

fn parse_fields(text: &str, pkg: &str) -> Vec<Field> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(ty), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        if name.contains('=') || parts.clone().next().is_some_and(|p| p.starts_with('=')) {
            continue; // a constant
        }
        let (base, inc, capacity) = match ty.find('[') {
            None => (ty, 0, 0),
            Some(i) => {
                let inner = &ty[i + 1..ty.len() - 1];
                if inner.is_empty() {
                    (&ty[..i], 144, 0)
                } else if let Some(n) = inner.strip_prefix("<=") {
                    (&ty[..i], 96, n.parse().unwrap_or(0))
                } else {
                    (&ty[..i], 48, inner.parse().unwrap_or(0))
                }
            }
        };
        let (base, string_capacity) = match base.split_once("<=") {
            Some((b, n)) => (b, n.parse().unwrap_or(0)),
            None => (base, 0),
        };
        let (type_id, nested) = if string_capacity > 0 {
            (21, String::new())
        } else if let Some(id) = primitive_id(base) {
            (id as u32, String::new())
        } else {
            (1, full_name(base, pkg))
        };
        out.push(Field {
            name: name.to_string(),
            type_id: type_id + inc,
            capacity,
            string_capacity,
            nested,
        });
    }
    out
}

fn description_json(type_name: &str, fields: &[Field]) -> String {
    let fields: Vec<String> = fields
        .iter()
        .map(|f| {
            format!(
                "{{\"name\": \"{}\", \"type\": {{\"type_id\": {}, \"capacity\": {}, \"string_capacity\": {}, \"nested_type_name\": \"{}\"}}}}",
                f.name, f.type_id, f.capacity, f.string_capacity, f.nested
            )
        })
        .collect();
    format!(
        "{{\"type_name\": \"{type_name}\", \"fields\": [{}]}}",
        fields.join(", ")
    )
}

/// The nested message types a `.msg` text of package `pkg` refers to, as full `pkg/msg/Type` names, in field
/// order.
pub fn nested_types(text: &str, pkg: &str) -> Vec<String> {
    parse_fields(text, pkg)
        .into_iter()
        .filter(|f| !f.nested.is_empty())
        .map(|f| f.nested)
        .collect()
}

/// The RIHS01 hash of `type_name`, given a lookup from full type names to their own `.msg` texts.
pub fn rihs01(type_name: &str, text_of: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let mut seen: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let mut stack = vec![type_name.to_string()];
    while let Some(t) = stack.pop() {
        if seen.contains_key(&t) {
            continue;
        }
        let pkg = t.split('/').next().unwrap_or("");
        let fields = parse_fields(&text_of(&t)?, pkg);
        for f in &fields {
            if !f.nested.is_empty() {
                stack.push(f.nested.clone());
            }
        }
        seen.insert(t.clone(), description_json(&t, &fields));
    }
    let main = seen.get(type_name)?.clone();
    let refs: Vec<&String> = seen
        .iter()
        .filter(|(k, _)| *k != type_name)
        .map(|(_, v)| v)
        .collect();
    let json = format!(
        "{{\"type_description\": {main}, \"referenced_type_descriptions\": [{}]}}",
        refs.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let digest = sha256(json.as_bytes());
    Some(format!(
        "RIHS01_{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// SHA-256 (FIPS 180-4) of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }
}

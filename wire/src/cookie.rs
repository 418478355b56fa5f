//! The `Cookie` request header (RFC 6265 section 4.2): `name=value` pairs
//! separated by `;`, possibly spread over several header fields.

/// Whether a field value is visible ASCII (or tab), as HTTP header values
/// read as text must be; other fields are skipped.
fn is_text(field: &[u8]) -> bool {
    field.iter().all(|&b| (32..127).contains(&b) || b == b'\t')
}

/// The value of the first cookie called `name` in the `Cookie` header
/// `fields`, in their order.
pub fn value<'a>(fields: impl IntoIterator<Item = &'a [u8]>, name: &str) -> Option<&'a str> {
    fields
        .into_iter()
        .filter(|f| is_text(f))
        .filter_map(|f| std::str::from_utf8(f).ok())
        .flat_map(|f| f.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::value;

    #[test]
    fn the_first_pair_of_that_name_across_fields() {
        let fields: [&[u8]; 2] = [b"a=1; sid=x", b"sid=y; b=2"];
        assert_eq!(value(fields, "sid"), Some("x"));
        assert_eq!(value(fields, "b"), Some("2"));
        assert_eq!(value(fields, "c"), None);
        assert_eq!(value([&b" sid=  "[..]], "sid"), Some(""));
    }

    #[test]
    fn fields_that_are_not_text_are_skipped() {
        let fields: [&[u8]; 2] = [b"sid=\xff", b"sid=ok"];
        assert_eq!(value(fields, "sid"), Some("ok"));
    }
}

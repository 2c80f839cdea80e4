//! The control socket's optional token. The socket is already 0600, so
//! only its owner (and root) can reach it; a token also keeps out other
//! processes running as that user, such as a shell on a shared host. It
//! travels as a `token` field beside the command on each line.

use crate::upstream::security::Secret;

use super::Command;

/// `command` as a request line, with the token when there is one.
pub fn with_token(command: &Command, token: Option<&str>) -> Result<String, String> {
    let mut value = serde_json::to_value(command).map_err(|e| e.to_string())?;
    if let (Some(token), Some(fields)) = (token, value.as_object_mut()) {
        fields.insert("token".into(), token.into());
    }
    serde_json::to_string(&value).map_err(|e| e.to_string())
}

/// The request line without its token, and the token. A line that is not
/// a JSON object comes back as it is, for the command parser to refuse.
pub fn take_token(line: &str) -> (String, Option<String>) {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(line) else {
        return (line.to_string(), None);
    };
    let token = match fields.remove("token") {
        Some(serde_json::Value::String(token)) => Some(token),
        _ => None,
    };
    let rest = serde_json::to_string(&fields).unwrap_or_else(|_| line.to_string());
    (rest, token)
}

/// Whether `given` is the expected token, compared in time that does not
/// depend on where they differ.
pub fn matches(expected: &Secret, given: Option<&str>) -> bool {
    let Some(given) = given else {
        return false;
    };
    let (a, b) = (expected.expose().as_bytes(), given.as_bytes());
    let mut differ = a.len() ^ b.len();
    for (x, y) in a.iter().zip(b.iter().cycle()) {
        differ |= usize::from(x ^ y);
    }
    differ == 0 && !b.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_travels_beside_the_command_and_is_taken_off_before_it() {
        let line = with_token(&Command::Status {}, Some("s3cret")).expect("line");
        let (rest, token) = take_token(&line);
        assert_eq!(token.as_deref(), Some("s3cret"));
        assert_eq!(
            serde_json::from_str::<Command>(&rest).expect("command"),
            Command::Status {}
        );
        let (rest, token) = take_token(r#"{"cmd":"status"}"#);
        assert_eq!((rest.as_str(), token), (r#"{"cmd":"status"}"#, None));
        assert_eq!(take_token("not json").0, "not json");
    }

    #[test]
    fn only_the_same_token_matches() {
        let expected = Secret::new("s3cret".into());
        assert!(matches(&expected, Some("s3cret")));
        for wrong in [
            None,
            Some(""),
            Some("s3cre"),
            Some("s3cret!"),
            Some("S3cret"),
        ] {
            assert!(!matches(&expected, wrong), "{wrong:?}");
        }
    }
}

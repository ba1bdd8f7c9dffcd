//! Prompts as the node receives them: the paper's template, the label a box of a prompt carries, and the checks
//! a prompt message goes through.
use crate::{Error, Result};

/// The paper's prompt; `{category}` is replaced by a plain-word category ("car", "traffic cone").
pub const PAPER_PROMPT: &str = "Please detect the {category} in the image and output 3D box center (x, y, z), size (length, width, height), yaw in radians.";

/// The paper's prompt for `category`.
pub fn paper_prompt(category: &str) -> String {
    PAPER_PROMPT.replace("{category}", category)
}

/// The label the boxes of `prompt` carry: the category of a prompt in the paper's template, else the prompt
/// itself (trimmed, at most 64 characters) — an open-vocabulary model has no other name for what it found.
pub fn label_from_prompt(prompt: &str) -> String {
    let p = prompt.trim();
    let (head, tail) = PAPER_PROMPT
        .split_once("{category}")
        .expect("template has a placeholder");
    if let Some(rest) = p.strip_prefix(head) {
        if let Some(cat) = rest.strip_suffix(tail) {
            if !cat.trim().is_empty() {
                return cat.trim().to_string();
            }
        }
    }
    p.chars().take(64).collect()
}

/// The standing prompts of a prompt message: one per non-empty line. An empty message, or a line longer than
/// `max_chars` characters, is an error that says which.
pub fn parse_prompt_message(text: &str, max_chars: usize) -> Result<Vec<String>> {
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if prompts.is_empty() {
        return Err(Error::invalid(
            "prompt",
            "empty prompt (send one prompt per line)",
        ));
    }
    for (i, p) in prompts.iter().enumerate() {
        let n = p.chars().count();
        if n > max_chars {
            return Err(Error::invalid(
                "prompt",
                format!(
                    "line {} has {n} characters, more than max_prompt_chars = {max_chars}",
                    i + 1
                ),
            ));
        }
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_template_or_the_prompt() {
        assert_eq!(
            label_from_prompt(&paper_prompt("traffic cone")),
            "traffic cone"
        );
        assert_eq!(
            label_from_prompt("  find every wheelchair "),
            "find every wheelchair"
        );
        assert_eq!(label_from_prompt(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn prompt_messages_are_split_and_checked() {
        assert_eq!(
            parse_prompt_message("a car\n\n  a bus  \n", 10).unwrap(),
            ["a car", "a bus"]
        );
        assert!(parse_prompt_message(" \n\t", 10).is_err());
        let e = parse_prompt_message(&"y".repeat(100_000), 4096).unwrap_err();
        assert!(e.to_string().contains("100000 characters"), "{e}");
    }
}

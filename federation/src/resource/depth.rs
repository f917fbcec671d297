//! How deeply a YAML or JSON text nests, bounded from above without parsing it.
//!
//! libyaml (under serde_yaml_ng) loads a whole document's events before anything can refuse
//! it, and it rescans its stack of flow levels on every token: 100,000 nested `{` took ~80 s of
//! a control-plane thread. serde's own recursion limits act only after that load. So before any
//! parser sees a body, this one linear pass over its bytes bounds the nesting and refuses
//! anything deeper than [`MAX_DEPTH`].
//!
//! The bound may overcount (a multi-line plain scalar indented deeper than its key counts as a
//! level) but never undercounts flow brackets (`[`, `{`), the nesting that costs; block nesting
//! (indentation, compact `- - -`) it bounds within a factor of two (a sequence written at its
//! key's column counts once), and serde's own limit of 128 backs that up. Quoted strings, comments and block scalars
//! (`|`, `>`) are skipped, so brackets inside them do not count. No resource comes near the
//! limit: Istio's deepest fields nest about a dozen levels.

/// Nesting beyond this is refused before parsing.
pub const MAX_DEPTH: usize = 100;

/// Where a text first nests deeper than `limit`: its 1-based line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    pub line: usize,
}

/// Checks that `text` nests at most `limit` levels (see the module doc for what counts).
pub fn check(text: &str, limit: usize) -> Result<(), TooDeep> {
    let mut scan = Scan::default();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line).as_bytes();
        if scan.line(line) > limit {
            return Err(TooDeep { line: i + 1 });
        }
    }
    Ok(())
}

#[derive(Default)]
struct Scan {
    /// Columns of the enclosing block collections, strictly increasing.
    indents: Vec<usize>,
    /// Open flow collections (`[`, `{`), which span lines.
    flow: usize,
    /// Inside a quoted scalar that continues on the next line.
    quote: Option<u8>,
    /// Inside a block scalar (`|`, `>`) whose parent line is at this column: lines indented
    /// deeper (and blank lines) are its text.
    block_scalar: Option<usize>,
}

impl Scan {
    /// Scans one line; returns the deepest nesting seen on it.
    fn line(&mut self, line: &[u8]) -> usize {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let content = &line[indent..];
        let mut start = indent;
        if let Some(parent) = self.block_scalar {
            if content.is_empty() || indent > parent {
                return 0;
            }
            self.block_scalar = None;
        }
        if self.quote.is_none() && self.flow == 0 {
            if content.is_empty() || content[0] == b'#' {
                return 0;
            }
            let marker = indent == 0
                && (content.starts_with(b"---") || content.starts_with(b"..."))
                && content.get(3).is_none_or(|&b| b == b' ' || b == b'\t');
            if marker {
                // A new document starts with no enclosing collections.
                self.indents.clear();
                start = 3;
            } else {
                while self.indents.last().is_some_and(|&top| top >= indent) {
                    self.indents.pop();
                }
                self.indents.push(indent);
            }
        }
        let mut depth = self.indents.len();
        let mut deepest = depth + self.flow;
        // The last significant byte on this line, to tell where a node may start.
        let mut last: Option<u8> = None;
        let mut i = start;
        while i < line.len() {
            let b = line[i];
            match self.quote {
                Some(b'"') => match b {
                    b'\\' => i += 1,
                    b'"' => self.quote = None,
                    _ => {}
                },
                Some(_) => {
                    if b == b'\'' {
                        if line.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            self.quote = None;
                        }
                    }
                }
                None => {
                    let node_start = last.is_none_or(|l| b"[{,:-?".contains(&l));
                    let spaced = |at: usize| line.get(at).is_none_or(|&n| n == b' ' || n == b'\t');
                    // What `last` becomes: the byte itself where it acted as YAML syntax, `a`
                    // (plain text) where it did not, so a quote after text is no quote.
                    let mut syntax = true;
                    match b {
                        b' ' | b'\t' => {
                            i += 1;
                            continue;
                        }
                        b'#' if i == 0 || matches!(line[i - 1], b' ' | b'\t') => break,
                        b'"' | b'\'' if node_start => self.quote = Some(b),
                        b'[' | b'{' if self.flow > 0 || node_start => {
                            self.flow += 1;
                            deepest = deepest.max(depth + self.flow);
                        }
                        b']' | b'}' if self.flow > 0 => self.flow -= 1,
                        b',' if self.flow > 0 => {}
                        // Compact block nesting on one line: `- - x`, `- ? x`.
                        b'-' | b'?' if self.flow == 0 && node_start && spaced(i + 1) => {
                            depth += 1;
                            deepest = deepest.max(depth);
                        }
                        // A value indicator: `: ` or, JSON style, right after a quoted key.
                        b':' if spaced(i + 1) || matches!(last, Some(b'"' | b'\'')) => {}
                        b'|' | b'>' if self.flow == 0 && node_start => {
                            self.block_scalar = Some(indent);
                            break;
                        }
                        _ => syntax = false,
                    }
                    last = Some(if syntax { b } else { b'a' });
                    i += 1;
                    continue;
                }
            }
            // Inside a quote: a closing quote leaves `"`/`'` as the last byte.
            if self.quote.is_none() {
                last = Some(b);
            }
            i += 1;
        }
        deepest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(text: &str) -> usize {
        (0..200).find(|&limit| check(text, limit).is_ok()).unwrap()
    }

    #[test]
    fn counts_flow_block_and_compact_nesting() {
        assert_eq!(depth(""), 0);
        assert_eq!(depth("a: 1\n"), 1);
        assert_eq!(depth("a:\n  b:\n    c: 1\nd: 2\n"), 3);
        assert_eq!(depth("a: {b: [1, {c: 2}]}\n"), 4);
        assert_eq!(depth("{\"a\": {\"b\": [[1]]}}"), 5);
        assert_eq!(depth("- - - x\n"), 4);
        // A sequence at its key's column counts once per line: within a factor of two.
        assert_eq!(depth("a:\n- b: 1\n  c:\n  - 2\n"), 3);
        // Flow collections span lines; JSON pretty-printed nests as written.
        assert_eq!(depth("{\n  \"a\": [\n    {\"b\": 1}\n  ]\n}\n"), 4);
    }

    #[test]
    fn strings_comments_and_block_scalars_do_not_count() {
        assert_eq!(depth("a: \"{{{[[[\"\nb: '[[[[ it''s'\n"), 1);
        assert_eq!(depth("a: 1 # {{{{{{\n# [[[[[\n"), 1);
        assert_eq!(depth("a: |\n  {{{{{{\n  [[[[\n\n  }\nb: 1\n"), 1);
        assert_eq!(depth("a: \"x\\\"{{{\"\n"), 1);
        // A quote inside a plain scalar is just a character.
        assert_eq!(depth("a: don't {b: 1}\n"), 1);
        assert_eq!(depth("a: {b: \"mul\n  ti [[[\"}\n"), 2);
        // Brackets inside a plain scalar in block context are text, and a quote after text
        // starts no string that could hide the brackets after it.
        assert_eq!(depth("path: /users/{id}[0]\n"), 1);
        assert_eq!(check("a: b[\"\nc: {{{{{\n", 4), Err(TooDeep { line: 2 }));
        assert_eq!(check("[-\"{{{{{\n", 4), Err(TooDeep { line: 1 }));
        // JSON strings after a key are strings.
        assert_eq!(depth("{\"a\":\"{{{{\"}"), 2);
    }

    #[test]
    fn documents_start_over() {
        assert_eq!(depth("a:\n  b:\n    c: 1\n---\nd: 1\n"), 3);
        assert_eq!(check("a:\n  b:\n    c: 1\n---\nd: 1\n", 3), Ok(()));
        assert_eq!(check("--- {a: {b: 1}}\n", 2), Ok(()));
    }

    #[test]
    fn deep_input_is_refused_at_its_line_in_linear_time() {
        let deep = "{\"a\":".repeat(100_000) + "1" + &"}".repeat(100_000);
        assert_eq!(check(&deep, MAX_DEPTH), Err(TooDeep { line: 1 }));
        let yaml = "a:\n".to_string() + &"- ".repeat(200) + "x\n";
        assert_eq!(check(&yaml, MAX_DEPTH), Err(TooDeep { line: 2 }));
        let mut block = String::new();
        for level in 0..150 {
            block.push_str(&" ".repeat(level));
            block.push_str("k:\n");
        }
        assert_eq!(
            check(&block, MAX_DEPTH),
            Err(TooDeep {
                line: MAX_DEPTH + 1
            })
        );
    }
}

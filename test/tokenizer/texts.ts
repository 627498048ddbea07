/**
 * A few hundred varied texts for comparing tokenizers: hand-picked hard cases (unicode, emoji, CJK,
 * digits, whitespace runs, code, special-token strings) and seeded random mixtures of them.
 */
const SEEDS = [
  '',
  ' ',
  'Hello world',
  ' Hello world',
  '  leading spaces',
  'trailing spaces   ',
  'tabs\tand\nnewlines\r\n\r\nand more',
  '\n\n\n',
  "don't I'll we've they're it's O'NEIL'S",
  'naïve café — 東京 🚀 tab\there',
  '日本語のテキストと中文文本，还有한국어.',
  'Ελληνικά και кириллица, עברית ועربية',
  '👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, ❤️ heart',
  'e\u0301 composed vs é precomposed, ﬁ ligature, Å Å',
  '1234567890 3.14159 -42 1e10 0x1F 1,000,000',
  '99999999999999999999',
  'def f(x):\n    return {"a": [1, 2, 3]}  # comment\n',
  'for (let i = 0; i < n; i++) { sum += a[i] * b[i]; }',
  '<html><body class="x">&amp; &lt;tag&gt;</body></html>',
  "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
  'https://example.com/path?query=1&x=y#frag',
  '     ',
  'a\u00a0b\u2003c\u3000d',
  '\u200b\u200d\ufeff zero widths',
  '!!!???...---___***',
  'ALLCAPS and lowercase and MiXeD',
  'emoji🙂without🙃spaces',
  '\u{1F600}\u{1F4A9}\u{10FFFF}',
  'The quick brown fox jumps over the lazy dog.',
  '<s>',
  '</s>',
  '<unk>',
  '<|endoftext|>',
  '<|begin_of_text|>Hello<|end_of_text|>',
  '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n',
  'text <|endoftext|> more text',
  'a<s>b</s>c',
  '<think>\nreasoning\n</think>\n\nanswer',
  '<0x41> <0xFF> byte tokens as text',
  '▁ metaspace char ▁▁ in text',
];

const POOL = [
  'a', 'Z', ' ', '  ', '\n', '\t', '7', '42', 'é', 'ß', '東', '京', '🚀', '👍🏽', 'ю', 'ש', '،', '.', ',', "'s", '’', '"',
  '{', '}', '()', '=>', '<s>', '</s>', '<|endoftext|>', '<|im_end|>', '<|eot_id|>', '▁', '\u0301', 'word', ' word', 'Tokenizer',
];

export function variedTexts(n = 300): string[] {
  let seed = 12345;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const out = [...SEEDS];
  while (out.length < n) {
    const len = 1 + Math.floor(rnd() * 24);
    let s = '';
    for (let i = 0; i < len; i++) s += POOL[Math.floor(rnd() * POOL.length)];
    out.push(s);
  }
  return out;
}

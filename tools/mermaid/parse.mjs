// Parse Mermaid diagrams with Mermaid's own parser: reads a JSON array of diagram texts on
// stdin, prints a JSON array with, for each, null (it parses) or the parser's error message.
// Mermaid needs a DOM (for DOMPurify) even to parse: jsdom provides one.
import { JSDOM } from 'jsdom';

const { window } = new JSDOM('');
globalThis.window = window;
globalThis.document = window.document;
const { default: mermaid } = await import('mermaid');

let input = '';
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const text of JSON.parse(input)) {
  try {
    await mermaid.parse(text);
    results.push(null);
  } catch (error) {
    results.push(String(error.message ?? error));
  }
}
process.stdout.write(JSON.stringify(results));

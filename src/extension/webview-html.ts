// The page every webview of the extension serves: a strict CSP (scripts by
// nonce only, no eval, no remote loads; the benchmark's vega runs its
// expressions with vega-interpreter for this), media/base.css and the page's
// own stylesheet, and its bundled script.
import crypto from 'node:crypto';
import * as vscode from 'vscode';

export function webviewHtml(webview: vscode.Webview, extensionUri: vscode.Uri, page: { title: string; stylesheet: string; script: string }): string {
  const nonce = crypto.randomBytes(18).toString('base64');
  const asset = (...p: string[]) => webview.asWebviewUri(vscode.Uri.joinPath(extensionUri, ...p)).toString();
  const csp = [
    "default-src 'none'",
    `style-src ${webview.cspSource} 'unsafe-inline'`,
    `font-src ${webview.cspSource}`,
    `img-src ${webview.cspSource} data:`,
    `script-src 'nonce-${nonce}'`,
  ].join('; ');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${asset('media', 'base.css')}">
<link rel="stylesheet" href="${asset('media', page.stylesheet)}">
<title>${page.title}</title>
</head>
<body>
<div id="app"></div>
<script nonce="${nonce}" src="${asset('dist', page.script)}"></script>
</body>
</html>`;
}

/**
 * Text a guest (or any program we do not control) wrote, made safe to print: serial consoles,
 * QEMU's log and celld's log end up in error messages and on users' terminals, where an escape
 * sequence could move the cursor, rewrite earlier lines, set the window title, or worse.
 */

// ESC [ ... final (CSI), ESC ] ... BEL or ESC \ (OSC), ESC P/X/^/_ ... ESC \ (DCS, SOS, PM, APC),
// any other ESC + one character; the same introduced by their 8-bit C1 forms.
const SEQUENCES =
  /(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?|\x1b[\s\S]?/g;
// C0 controls but tab and newline, DEL, C1 controls.
const CONTROLS = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

/** `text` without terminal control sequences and control characters (newline and tab are kept). */
export function stripControl(text: string): string {
  return text.replace(SEQUENCES, '').replace(CONTROLS, '');
}

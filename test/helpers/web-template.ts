/**
 * A template file (docs/templates.md) of busybox's httpd serving `page` at :8080, with a `server`
 * variant of 1 vCPU and 256 MiB; `serverExtra` adds lines to that variant, `more` adds text after it.
 */
export function webTemplateToml(page: string, serverExtra = '', more = ''): string {
  return `template_id = "web"

[build]
base = "busybox"
[[build.step]]
run = "mkdir -p /www && echo '${page}' > /www/index.html"

[service]
start = "httpd -f -p 8080 -h /www"
ready = "wget -q -O /dev/null http://127.0.0.1:8080/"

[[variants]]
role = "server"
vcpus = 1
mem_mib = 256
${serverExtra}${more}`;
}

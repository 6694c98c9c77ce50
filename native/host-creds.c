/*
 * host-creds: two things celld needs from Linux that Node's standard library does not offer.
 *
 *   peerCredentials(fd)        the pid, uid and gid of the process at the other end of a unix
 *                              socket (SO_PEERCRED), taken by the kernel when it connected.
 *   withFsCredentials(uid, gid, groups, fn)
 *                              calls fn() with the calling thread's file-system credentials
 *                              (fsuid, fsgid and supplementary groups) set to a caller's, then
 *                              puts celld's back. Only this thread changes: the raw syscalls are
 *                              used on purpose, because glibc's setgroups() would apply to every
 *                              thread of the process (libuv's pool included). fn must do its file
 *                              work synchronously; a descriptor it opens keeps the access it was
 *                              opened with.
 *
 * Written by hand because no maintained npm package offers either (see docs/security.md).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <node_api.h>
#include <stdio.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_GROUPS 256

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_throw_error(env, "host_creds", message);
  return NULL;
}

static napi_value peer_credentials(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "peerCredentials(fd): fd must be a number");
    return NULL;
  }
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return throw_errno(env, "SO_PEERCRED", errno);
  napi_value result, pid, uid, gid;
  napi_create_object(env, &result);
  napi_create_int64(env, cred.pid, &pid);
  napi_create_int64(env, cred.uid, &uid);
  napi_create_int64(env, cred.gid, &gid);
  napi_set_named_property(env, result, "pid", pid);
  napi_set_named_property(env, result, "uid", uid);
  napi_set_named_property(env, result, "gid", gid);
  return result;
}

/* The thread's own credentials, set with raw syscalls (see the header). */
static int set_thread_groups(size_t n, const gid_t *list) { return (int)syscall(SYS_setgroups, n, list); }

static napi_value with_fs_credentials(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  uint32_t uid, gid, ngroups = 0;
  bool is_array = false;
  napi_valuetype fn_type;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 4 ||
      napi_get_value_uint32(env, argv[0], &uid) != napi_ok || napi_get_value_uint32(env, argv[1], &gid) != napi_ok ||
      napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[2], &ngroups) != napi_ok ||
      napi_typeof(env, argv[3], &fn_type) != napi_ok || fn_type != napi_function || ngroups > MAX_GROUPS) {
    napi_throw_type_error(env, NULL, "withFsCredentials(uid, gid, groups, fn)");
    return NULL;
  }
  gid_t groups[MAX_GROUPS];
  for (uint32_t i = 0; i < ngroups; i++) {
    napi_value v;
    uint32_t g;
    if (napi_get_element(env, argv[2], i, &v) != napi_ok || napi_get_value_uint32(env, v, &g) != napi_ok) {
      napi_throw_type_error(env, NULL, "withFsCredentials: groups must be numbers");
      return NULL;
    }
    groups[i] = g;
  }

  gid_t saved_groups[MAX_GROUPS];
  int nsaved = getgroups(MAX_GROUPS, saved_groups);
  if (nsaved < 0) return throw_errno(env, "getgroups", errno);
  uid_t saved_uid = (uid_t)setfsuid((uid_t)-1);
  gid_t saved_gid = (gid_t)setfsgid((gid_t)-1);

  /* Order matters: groups and gid while still privileged, the uid last. */
  if (set_thread_groups(ngroups, groups) != 0) return throw_errno(env, "setgroups", errno);
  setfsgid(gid);
  setfsuid(uid);
  /* setfsuid/setfsgid report failure only by leaving the old value: check they took. */
  bool took = (uid_t)setfsuid((uid_t)-1) == uid && (gid_t)setfsgid((gid_t)-1) == gid;

  napi_value result = NULL;
  napi_status status = napi_ok;
  if (took) {
    napi_value global;
    napi_get_global(env, &global);
    status = napi_call_function(env, global, argv[3], 0, NULL, &result);
  }

  setfsuid(saved_uid);
  setfsgid(saved_gid);
  if (set_thread_groups((size_t)nsaved, saved_groups) != 0 || (uid_t)setfsuid((uid_t)-1) != saved_uid) {
    /* celld cannot go on with a stranger's credentials on its main thread. */
    napi_fatal_error("withFsCredentials", NAPI_AUTO_LENGTH, "could not restore celld's credentials", NAPI_AUTO_LENGTH);
  }
  if (!took) {
    napi_throw_error(env, "host_creds", "could not take the caller's file-system credentials");
    return NULL;
  }
  if (status != napi_ok) return NULL; /* fn threw: the exception stays pending and reaches the caller */
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"peerCredentials", NULL, peer_credentials, NULL, NULL, NULL, napi_enumerable, NULL},
      {"withFsCredentials", NULL, with_fs_credentials, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, 2, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)

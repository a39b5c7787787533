/* A host library for skiff's EXEC tests: functions with vAccel's
 * convention int f(struct vaccel_arg *in, size_t nr_in,
 *                  struct vaccel_arg *out, size_t nr_out). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

struct vaccel_arg {
	void *buf;
	size_t size;
	uint32_t type;
	uint32_t custom;
};

/* out[0] (UINT32) = the sum of in[0] (UINT32_ARRAY). */
int sum_u32(struct vaccel_arg *in, size_t nr_in, struct vaccel_arg *out,
	    size_t nr_out)
{
	if (nr_in != 1 || nr_out != 1 || out[0].size != 4 || in[0].size % 4)
		return 1;
	const uint32_t *v = in[0].buf;
	uint32_t s = 0;
	for (size_t i = 0; i < in[0].size / 4; i++)
		s += v[i];
	*(uint32_t *)out[0].buf = s;
	return 0;
}

int always_fails(struct vaccel_arg *in, size_t nr_in, struct vaccel_arg *out,
		 size_t nr_out)
{
	(void)in, (void)nr_in, (void)out, (void)nr_out;
	return 7;
}

/* Not a function: EXEC must refuse it. */
int exported_data = 42;

/* Keeps libc a dependency whose symbols (system) EXEC must not reach. */
void *keep_libc(size_t n) { return malloc(n); }

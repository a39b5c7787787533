/* An EXEC library for tests/remote.rs: its sum_u32 marks that it runs
 * (the file named by $SKIFF_SLOW_MARK) and then takes a minute, so the
 * test can kill the agent while a call is inside the plugin. */
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

int sum_u32(void *in, size_t nr_in, void *out, size_t nr_out)
{
	(void)in, (void)nr_in, (void)out, (void)nr_out;
	const char *mark = getenv("SKIFF_SLOW_MARK");
	if (mark)
		close(open(mark, O_CREAT | O_WRONLY, 0600));
	sleep(60);
	return 0;
}

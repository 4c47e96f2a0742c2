/* SPDX-License-Identifier: MIT */
#include <stdio.h>

int eval_codec_main(int argc, char **argv);

int eval_codec_main(int argc, char **argv)
{
	fprintf(stderr, "kvtier-eval codec: not built yet\n");
	return 2;
}

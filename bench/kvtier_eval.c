/* SPDX-License-Identifier: MIT */
/* kvtier-eval: evaluation of codecs and of the prefetch predictor on real .kvd dumps. */
#include <stdio.h>
#include <string.h>

int eval_codec_main(int argc, char **argv);
int eval_predict_main(int argc, char **argv);
int eval_dict_main(int argc, char **argv);

static void usage(FILE *f)
{
	fprintf(f, "usage: kvtier-eval codec [options] DUMP.kvd\n"
		   "       kvtier-eval predict [options] DUMP.kvd\n"
		   "       kvtier-eval dict -o OUT.kvdict [options] DUMP.kvd...\n"
		   "run 'kvtier-eval COMMAND --help' for options\n");
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "codec"))
		return eval_codec_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "predict"))
		return eval_predict_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "dict"))
		return eval_dict_main(argc - 1, argv + 1);
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "kvtier-eval: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}

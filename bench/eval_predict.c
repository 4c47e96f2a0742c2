/* SPDX-License-Identifier: MIT */
#include <stdio.h>

int eval_predict_main(int argc, char **argv);

int eval_predict_main(int argc, char **argv)
{
	fprintf(stderr, "kvtier-eval predict: not built yet\n");
	return 2;
}

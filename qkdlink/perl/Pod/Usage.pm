# A stand-in for Pod::Usage, which Verilator's `verilator` script loads but needs only to print its --help.
# Debian's minimal perl-base lacks Pod::Usage (it is in perl-modules); qkdlink.toolchain appends this folder to
# PERL5LIB, so a real Pod::Usage, when installed, is found first and this one is never loaded.
package Pod::Usage;
use strict;
use warnings;
use Exporter 'import';
our @EXPORT = qw(pod2usage);

sub pod2usage {
    my %args = @_ == 1 ? (-message => $_[0]) : @_;
    my $message = $args{-message} // $args{-msg} // "see the Verilator manual for usage";
    my $status = $args{-exitval} // $args{-verbose} // 2;
    $status = 0 if $status eq "NOEXIT";
    print STDERR "$message\n";
    exit($status) unless ($args{-exitval} // "") eq "NOEXIT";
}

1;
